"""``rpc://``: results come back to the publishing process through RabbitMQ's direct reply-to.

The publishing process consumes the pseudo-queue ``amq.rabbitmq.reply-to`` (no-ack) on one channel and
publishes its tasks with ``reply_to="amq.rabbitmq.reply-to"`` **on that same channel**: the broker rewrites
reply_to to a name that routes back to this consumer, and workers publish state messages to it through the
default exchange. Nothing is declared or stored on the broker; a result whose publisher went away is dropped.

The channel is the app's reply channel (``app.connections.reply_channel``; on RabbitMQ
:mod:`amqptasks.broker.rabbitmq.replies`): ``get()`` reads it in the waiting thread unless another thread does
already. If its connection is lost, the next publish opens a new one; results still due on the old one are lost
(their ``get()`` times out).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from amqptasks import errors
from amqptasks.broker import forks
from amqptasks.message.envelope import Envelope
from amqptasks.results.backend import OnMessage, ResultBackend, StateBook
from amqptasks.results.states import READY_STATES, decode, encode

if TYPE_CHECKING:
    from amqptasks.app import App

log = logging.getLogger("amqptasks.results")


class RpcBackend(ResultBackend):
    uses_reply_to = True
    url = "rpc://"

    def __init__(self, app: App) -> None:
        self.app = app
        self.book = StateBook()
        #: Whether this process published a task on the reply channel: if not, no result can ever arrive here.
        self._published = False
        forks.on_fork_in_child(self._forget_inherited)

    def _on_reply(self, body: bytes, correlation_id: str | None) -> None:
        try:
            self.book.add(decode(body))
        except ValueError:
            log.warning("ignored a reply that is not a result state message (correlation_id=%s)", correlation_id)

    def _forget_inherited(self) -> None:
        # A forked child: a thread of the parent's may have held the book's lock at the fork.
        self.book.changed = threading.Condition()
        self._published = False  # the parent's replies go to the parent's channel

    # --- caller side -------------------------------------------------------------------------------------

    def publish(self, envelope: Envelope) -> None:
        self._published = True
        self.app.connections.reply_channel(self._on_reply).publish(envelope)

    def reply_address(self) -> str | None:
        """This process's own reply-to address (opening the reply channel if need be), for the steps of a chain
        to carry; None where the broker has no such address (memory://)."""
        channel = self.app.connections.reply_channel(self._on_reply)
        address = getattr(channel, "address", None)  # RabbitMQ's reply channel knows it; others have none
        return str(address) if address else None

    def peek(self, task_id: str) -> dict[str, Any] | None:
        latest = self.book.latest(task_id)
        if latest is None or latest.get("status") not in READY_STATES:
            self._pump(0)  # what has arrived but not been read yet (``ready()`` in a loop)
            latest = self.book.latest(task_id)
        return latest

    def wait(
        self, task_id: str, timeout: float | None, interval: float, on_message: OnMessage | None
    ) -> dict[str, Any]:
        if not self._published and self.book.latest(task_id) is None:
            # No reply channel was ever opened here: nothing published from this process, so no state can come.
            raise errors.ResultUnavailable(
                f"task {task_id}: rpc:// results go only to the process that published the task, and this process "
                "has published none, so this result can never arrive here. Wait for it where it was published, or "
                "keep results in a store readable from anywhere (YAML 'results: {backend: redis://...}')"
            )
        return self.book.wait(task_id, timeout, on_message, pump=self._pump)

    def _pump(self, seconds: float) -> bool:
        """Read the replies in this thread when no other thread does (see broker/rabbitmq/replies.py)."""
        channel = self.app.connections.open_reply_channel()
        return channel is not None and channel.pump(seconds)

    def forget(self, task_id: str) -> None:
        self.book.forget(task_id)

    def close(self) -> None:
        """The reply channel belongs to ``app.connections`` (closed with the app)."""

    # --- worker side -------------------------------------------------------------------------------------

    def store(self, task_id: str, meta: dict[str, Any], reply_to: str | None) -> None:
        if reply_to:
            self.app.publisher.publish(_reply(task_id, meta, reply_to))

    async def astore(self, task_id: str, meta: dict[str, Any], reply_to: str | None) -> None:
        if reply_to:
            publisher = await self.app.aio_publisher()
            await publisher.publish(_reply(task_id, meta, reply_to))


class Unreachable(ResultBackend):
    """The backend of results that cannot come back by rpc:// (``publish_many`` does not publish on the reply
    channel): reading one says why at once instead of waiting for a timeout."""

    uses_reply_to = True
    url = "rpc://"

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def peek(self, task_id: str) -> dict[str, Any] | None:
        return None

    def wait(
        self, task_id: str, timeout: float | None, interval: float, on_message: OnMessage | None
    ) -> dict[str, Any]:
        raise errors.ResultUnavailable(f"task {task_id}: {self.reason}")

    def forget(self, task_id: str) -> None:
        return None

    def close(self) -> None:
        return None


def _reply(task_id: str, meta: dict[str, Any], reply_to: str) -> Envelope:
    # Not mandatory, not persistent: a reply-to whose publisher has gone is dropped by the broker, as it should.
    return Envelope("", reply_to, encode(meta), correlation_id=task_id, delivery_mode=1, mandatory=False)
