"""The worker's line to RabbitMQ: a pika connection in its own thread, feeding the worker's event loop.

Why not aio-pika here: profiled, aiormq's frame parsing plus one asyncio task and one socket write per
delivery and per ack cost the worker more than its tasks did. pika's parser is about half as expensive,
and running it in a thread lets it overlap the loop's work. Two more savings come from batching:

- deliveries reach the loop in batches, one wake-up per socket read, not one per message;
- acknowledgements are coalesced: a run of settled delivery tags with no gap below it is acknowledged with
  one ``basic.ack(multiple=True)``. An ack above a gap (a slow task still holds a lower tag) waits at most
  :data:`ACK_HOLD_S`, then goes alone. Rejects and requeues are sent at once, before any ack that covers them.

Connection or channel lost: the thread reconnects with backoff, checks the queues again and re-consumes.
The deliveries of the old channel are *stale*: the broker has requeued them, so the worker must neither run
them (if not started) nor try to settle them (:meth:`Transport.is_stale`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from amqptasks.broker import pika_floats  # noqa: F401  (float headers)
from amqptasks.broker.connection import open_blocking, tls_options
from amqptasks.broker.url import BrokerURL
from amqptasks.config.model import Broker
from amqptasks.errors import AmqpTasksError

log = logging.getLogger("amqptasks.worker")

#: An acknowledgement above a gap waits for the gap to close at most this long before it is sent alone.
ACK_HOLD_S = 0.2
#: How long the thread waits for socket events before it looks at timers, held acks and shutdown.
TICK_S = 0.05
RECONNECT_MIN_S, RECONNECT_MAX_S = 0.5, 5.0


@dataclass(slots=True)
class Incoming:
    """One delivery, as the broker sent it (only what the worker reads)."""

    body: bytes
    headers: dict[str, Any] | None
    content_type: str | None
    content_encoding: str | None
    correlation_id: str | None
    reply_to: str | None
    priority: int | None
    redelivered: bool
    exchange: str
    routing_key: str
    delivery_tag: int
    queue: str
    #: Which channel it came on (a counter): settling it on a later channel would settle another message.
    channel: int


class Transport:
    """Consumes *queues* with *prefetch*; hands batches of :class:`Incoming` to *on_batch* on *loop*."""

    def __init__(
        self,
        broker: Broker,
        name: str,
        queues: Sequence[str],
        prefetch: int,
        on_batch: Callable[[list[Incoming]], None],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.broker, self.name, self.queues, self.prefetch = broker, name, list(queues), prefetch
        self._on_batch, self._loop = on_batch, loop
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._channel_id = 0
        self._consumer_tags: list[str] = []
        self._batch: list[Incoming] = []
        # Settlements from the loop: (how, tag, channel). deque.append/popleft are atomic under the GIL.
        self._ops: collections.deque[tuple[str, int, int]] = collections.deque()
        self._flush_scheduled = False
        self._wake_scheduled = False
        self._wake_after = max(1, prefetch // 4)
        self._floor = 0  # every tag up to here is settled on the broker
        self._done: set[int] = set()  # settled tags above the floor (their ack may still be held)
        self._held: dict[int, float] = {}  # acks not sent yet: tag -> when it was settled
        self._consuming = True
        self._closing = False
        self.connected = False
        self._thread: threading.Thread | None = None
        self._closed_event = threading.Event()  # ends a reconnect's wait early on close
        self._ready: asyncio.Future[None] = loop.create_future()
        self._stopped: asyncio.Future[None] = loop.create_future()

    # --- called on the loop -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and consume; raises on a missing queue or an unreachable broker, as the first attempt found."""
        self._thread = threading.Thread(target=self._run, name="amqptasks-consumer", daemon=True)
        self._thread.start()
        await self._ready

    def is_stale(self, incoming: Incoming) -> bool:
        """Its channel is gone: the broker has requeued it and will deliver it again."""
        return incoming.channel != self._channel_id or not self.connected

    def settle(self, incoming: Incoming, how: str) -> None:
        """ "ack", "reject" (dead-letter) or "requeue"; sent from the connection's thread soon after.

        Waking that thread costs a pipe write and a GIL hand-off. So acks wait for its next turn (after its
        next socket read, or :data:`TICK_S`) until a quarter of the prefetch is waiting, which keeps the broker
        sending; then it is woken, once per turn of the event loop. Rejects and requeues wake it at once.
        """
        self._ops.append((how, incoming.delivery_tag, incoming.channel))
        if len(self._ops) < self._wake_after and how == "ack":
            return  # the thread's next turn (at most TICK_S away) sends it; the broker still has work in flight
        if not self._wake_scheduled:
            self._wake_scheduled = True
            self._loop.call_soon(self._wake)

    def _wake(self) -> None:
        self._wake_scheduled = False
        if self._flush_scheduled:
            return
        self._flush_scheduled = True
        connection = self._connection
        try:
            if connection is not None:
                connection.add_callback_threadsafe(self._flush)
        except pika.exceptions.ConnectionWrongStateError:  # reconnecting: flushed (or dropped) after it
            pass

    async def cancel(self) -> None:
        """Stop consuming: the broker sends nothing more; deliveries already here stay in the worker's hands."""
        self._consuming = False
        done = self._loop.create_future()
        connection = self._connection
        if connection is None or not self.connected:
            return
        try:
            connection.add_callback_threadsafe(lambda: self._cancel_consumers(done))
        except pika.exceptions.ConnectionWrongStateError:
            return
        try:
            await asyncio.wait_for(asyncio.shield(done), 5.0)
        except TimeoutError:
            log.warning("cancelling the consumers took too long; closing anyway")

    async def close(self) -> None:
        """Send every settlement still held, then close the connection (the broker requeues the rest)."""
        self._closing = True
        self._closed_event.set()
        if self._thread is None:
            return
        connection = self._connection
        try:
            if connection is not None:
                connection.add_callback_threadsafe(lambda: None)  # wake the thread up
        except pika.exceptions.ConnectionWrongStateError:
            pass
        await asyncio.wait({self._stopped}, timeout=10.0)

    # --- the connection's thread -----------------------------------------------------------------------

    def _run(self) -> None:
        attempt, first = 0, True
        try:
            while not self._closing:
                try:
                    self._connect()
                    if first:
                        first = False
                        self._loop.call_soon_threadsafe(_set, self._ready, None)
                    attempt = 0
                    self._serve()
                except (AmqpTasksError, pika.exceptions.AMQPError, OSError) as exc:
                    if first:  # start() raises it: a wrong queue name or URL is the user's to fix
                        error = exc if isinstance(exc, AmqpTasksError) else AmqpTasksError(_describe(exc))
                        self._loop.call_soon_threadsafe(_set, self._ready, error)
                        return
                    if not self._closing:
                        log.warning("connection to the broker lost (%s); reconnecting", _describe(exc))
                finally:
                    self._disconnect()
                if not self._closing:
                    self._closed_event.wait(min(RECONNECT_MAX_S, RECONNECT_MIN_S * 2**attempt))
                    attempt += 1
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is closed already (interpreter exit)
                self._loop.call_soon_threadsafe(_set, self._stopped, None)

    def _connect(self) -> None:
        url = BrokerURL.parse(self.broker.url)
        self._connection = open_blocking(
            url, heartbeat=self.broker.heartbeat, connection_name=self.name, tls=tls_options(self.broker)
        )
        self._open_channel()

    def _open_channel(self) -> None:
        assert self._connection is not None
        channel = self._connection.channel()
        channel.basic_qos(prefetch_count=self.prefetch)
        for queue in self.queues:
            try:
                channel.queue_declare(queue, passive=True)
            except pika.exceptions.ChannelClosedByBroker:
                raise AmqpTasksError(
                    f"queue {queue!r} does not exist on the broker; declare it in the YAML and run "
                    "'amqptasks topology apply', or check the -Q names"
                ) from None
        self._channel_id += 1
        self._floor, self._done, self._held = 0, set(), {}
        self._channel = channel
        self._consumer_tags = []
        if self._consuming:
            for queue in self.queues:
                callback = self._make_callback(queue, self._channel_id)
                self._consumer_tags.append(channel.basic_consume(queue, callback))
        self.connected = True

    def _make_callback(self, queue: str, channel_id: int) -> Callable[..., None]:
        batch = self._batch

        def on_message(
            _ch: BlockingChannel, method: Any, properties: pika.BasicProperties, body: bytes
        ) -> None:  # fmt: skip
            batch.append(Incoming(
                body, properties.headers, properties.content_type, properties.content_encoding,
                properties.correlation_id, properties.reply_to, properties.priority, bool(method.redelivered),
                method.exchange or "", method.routing_key or "", method.delivery_tag, queue, channel_id,
            ))  # fmt: skip

        return on_message

    def _serve(self) -> None:
        assert self._connection is not None
        while not self._closing:
            self._connection.process_data_events(time_limit=TICK_S)
            self._hand_over()
            self._flush()
            if self._channel is None or self._channel.is_closed:
                # Closed by the broker (e.g. consumer_timeout's PRECONDITION_FAILED); it requeued its deliveries.
                log.warning("the consuming channel was closed by the broker; reopening it")
                self.connected = False
                self._open_channel()
        self._flush(final=True)

    def _hand_over(self) -> None:
        if self._batch:
            batch = self._batch[:]
            self._batch.clear()  # the same list object: the consumer callbacks append to it
            self._loop.call_soon_threadsafe(self._on_batch, batch)

    def _flush(self, final: bool = False) -> None:
        self._flush_scheduled = False
        channel, current = self._channel, self._channel_id
        if channel is None or channel.is_closed:
            self._ops.clear()
            return
        now = time.monotonic()
        while self._ops:
            how, tag, channel_id = self._ops.popleft()
            if channel_id != current or tag <= self._floor or tag in self._done:
                continue  # an old channel's delivery (already requeued by the broker), or settled already
            self._done.add(tag)
            if how == "ack":
                self._held[tag] = now
            elif how == "reject":
                channel.basic_reject(tag, requeue=False)
            else:
                channel.basic_nack(tag, multiple=False, requeue=True)
        top = self._floor
        while top + 1 in self._done:
            top += 1
        if top > self._floor:
            covered = [tag for tag in self._held if tag <= top]
            if covered:
                # The highest *held* ack, not *top*: a tag acked alone or rejected is unknown to the broker now.
                channel.basic_ack(max(covered), multiple=True)
            for tag in covered:
                del self._held[tag]
            for tag in range(self._floor + 1, top + 1):
                self._done.discard(tag)
            self._floor = top
        for tag, since in list(self._held.items()):
            if final or now - since >= ACK_HOLD_S:
                channel.basic_ack(tag)
                del self._held[tag]

    def _cancel_consumers(self, done: asyncio.Future[None]) -> None:
        try:
            if self._channel is not None and self._channel.is_open:
                for tag in self._consumer_tags:
                    self._channel.basic_cancel(tag)
            self._consumer_tags = []
            self._hand_over()
        finally:
            self._loop.call_soon_threadsafe(_set, done, None)

    def _disconnect(self) -> None:
        self.connected = False
        connection, self._connection, self._channel = self._connection, None, None
        self._batch.clear()  # never handed over: the broker requeues them with the channel
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except Exception:  # already half gone
                log.debug("closing the consumer connection failed", exc_info=True)


def _set(future: asyncio.Future[None], result: BaseException | None) -> None:
    if future.done():
        return
    if result is None:
        future.set_result(None)
    else:
        future.set_exception(result)


def _describe(exc: BaseException) -> str:
    text = str(exc) or repr(exc)
    return f"{type(exc).__name__}: {text}" if type(exc).__name__ not in text else text
