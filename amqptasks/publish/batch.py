"""``with app.batch():`` and ``async with app.abatch():`` -- every task published in the block is sent at once,
with its confirm collected, and the block settles them all when it ends.

Inside the block, ``delay()``, ``apply_async()`` and ``send_task()`` (and ``adelay()``/``aapply_async()`` under
``abatch()``) return their ``AsyncResult`` as soon as the message is handed over, without waiting for the broker.
A thread of the batch publishes them as they come, through the app's confirmed publisher
(``Publisher.publish_many``: pipelined confirms, reconnects and resends as the retry policy allows), while the
block builds the next ones. When the block ends, every message is confirmed, or one :class:`BatchPublishError`
says which failed and why (returned as unroutable, nacked, or of unknown fate after a lost connection or a refused
channel) and carries the results of those that were confirmed. An exception raised inside the block ends it too:
what was sent is settled first, then the exception propagates (a publishing failure is added to it as a note).

- **Nesting**: an inner block joins the outer one; only the outermost settles.
- **Threads**: a batch belongs to the thread that opened it. Other threads (``asyncio.to_thread`` included, which
  copies the context) publish one by one, confirmed as usual.
- **Forks**: a forked child publishes one by one, confirmed as usual, inside a block it inherited; the parent's
  batch is the parent's to settle.
- Tasks whose results come back by ``rpc://`` are published on the reply channel, one by one, as outside a block.

Outside a block nothing changes: ``delay()`` returns once its message is confirmed.
"""

from __future__ import annotations

import contextvars
import os
import queue
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from amqptasks import errors

if TYPE_CHECKING:
    from amqptasks.broker.drivers import Publisher
    from amqptasks.message.envelope import Envelope

__all__ = ["Batch", "BatchPublishError", "Batches", "settle"]

BatchPublishError = errors.BatchPublishError

#: Called with (message, envelope) of each message confirmed, once the batch is settled (after_publish).
OnConfirmed = Callable[[Any, "Envelope"], None]


class Batch:
    """The messages of one ``with app.batch():`` block, sent by a thread of their own as they are added."""

    def __init__(self, publisher: Publisher, on_confirmed: OnConfirmed | None = None) -> None:
        self._publisher = publisher
        self._on_confirmed = on_confirmed
        self.pid = os.getpid()
        self.thread = threading.get_ident()
        self.depth = 1
        #: The result of each message added, in order.
        self.results: list[Any] = []
        self._signalled: list[tuple[int, Any, Envelope]] = []  # (position, message, envelope) for on_confirmed
        self._queue: queue.SimpleQueue[Envelope | None] = queue.SimpleQueue()
        self._sender: threading.Thread | None = None
        self._error: BaseException | None = None
        self._ended = False  # the sender took the end-of-block marker
        self._settled = False

    def owns(self) -> bool:
        """Whether a publish here, now, belongs to this batch (same process, same thread, not settled yet)."""
        return not self._settled and self.pid == os.getpid() and self.thread == threading.get_ident()

    def add(self, envelope: Envelope, result: Any, message: Any = None) -> None:
        """Hand *envelope* to the batch's thread; *result* is what the caller got for it."""
        if self._sender is None:
            self._sender = threading.Thread(target=self._send, name="amqptasks-batch", daemon=True)
            self._sender.start()
        if message is not None and self._on_confirmed is not None:
            self._signalled.append((len(self.results), message, envelope))
        self.results.append(result)
        self._queue.put(envelope)

    def _send(self) -> None:
        try:
            self._publisher.publish_many(self._taken())
        except BaseException as exc:  # reported by settle(), in the block's thread
            self._error = exc
            while not self._ended and self._queue.get() is not None:  # the rest is not sent: let the block end
                pass

    def _taken(self) -> Iterator[Envelope]:
        while (envelope := self._queue.get()) is not None:
            yield envelope
        self._ended = True

    def settle(self) -> None:
        """Wait until every message added is settled; raise :class:`BatchPublishError` unless all were confirmed."""
        if self._settled:
            return
        self._settled = True
        if self._sender is None:
            return
        self._queue.put(None)
        self._sender.join()
        error = _batch_error(self._error, self.results) if self._error is not None else None
        if self._on_confirmed is not None:
            failed = set() if error is None else {position for position, _, _ in error.failed}
            unknown = error is not None and bool(error.unknown)
            for position, message, envelope in self._signalled:
                if position not in failed and not unknown:
                    self._on_confirmed(message, envelope)
        if error is not None:
            raise error


class Batches:
    """The open batch of each thread, for one app (a context variable: new threads start without one)."""

    def __init__(self) -> None:
        self._current: contextvars.ContextVar[Batch | None] = contextvars.ContextVar("amqptasks_batch", default=None)

    def current(self) -> Batch | None:
        batch = self._current.get()
        return batch if batch is not None and batch.owns() else None

    def enter(self, make: Callable[[], Batch]) -> tuple[Batch, bool]:
        """The batch a block joins (an open one of this thread) or opens; True if it opened it."""
        batch = self.current()
        if batch is not None:
            batch.depth += 1
            return batch, False
        batch = make()
        self._current.set(batch)
        return batch, True

    def leave(self, batch: Batch, opened: bool) -> bool:
        """End a block; True when it was the outermost, which must then settle the batch (:func:`settle`)."""
        if not opened:
            batch.depth -= 1
            return False
        self._current.set(None)
        return True


def settle(batch: Batch, failure: BaseException | None) -> None:
    """Settle *batch* at the end of its block; *failure*, raised inside the block, is what propagates then (a
    publishing failure is added to it as a note)."""
    try:
        batch.settle()
    except errors.BatchPublishError as error:
        if failure is None:
            raise
        failure.add_note(f"and publishing the batch failed too: {error}")


def _batch_error(cause: BaseException, results: list[Any]) -> errors.BatchPublishError:
    """What the block reports: which messages failed and why, from the publisher's error for the whole batch."""
    total = len(results)
    reasons: dict[int, str] = {}
    if isinstance(cause, errors.BatchUnroutableError | errors.PublishNacked):
        for position in getattr(cause, "positions", ()):
            reasons[position] = "nacked" if isinstance(cause, errors.PublishNacked) else "unroutable"
        for position in getattr(cause, "returned", ()):
            reasons.setdefault(position, "unroutable")
    if reasons:  # every other message was confirmed
        failed = [(position, results[position], reasons[position]) for position in sorted(reasons)]
        confirmed = [result for position, result in enumerate(results) if position not in reasons]
        return errors.BatchPublishError(failed=failed, results=confirmed, unknown=[], total=total, cause=cause)
    if isinstance(cause, Exception):
        return errors.BatchPublishError(failed=[], results=[], unknown=list(results), total=total, cause=cause)
    raise cause  # KeyboardInterrupt, SystemExit: not a publishing failure
