"""The worker's line to a ``memory://`` broker: the same interface as :class:`~amqptasks.worker.transport.Transport`
(start, settle, is_stale, cancel, close), so the worker runs its real code path -- decode, admission checks,
hooks, retries, acks, reject to the dead-letter exchange -- against the in-process broker.

Nothing arrives by itself: :meth:`MemoryTransport.pump` takes what is ready (up to the prefetch, round-robin over
the queues) and hands it over as a batch, as pika's consumer callbacks would. ``amqptasks.testing.drain`` pumps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from amqptasks.broker.memory import ChannelError, MemoryBroker
from amqptasks.errors import AmqpTasksError
from amqptasks.worker.transport import Incoming

__all__ = ["MemoryTransport"]


class MemoryTransport:
    def __init__(
        self,
        broker: MemoryBroker,
        queues: Sequence[str],
        prefetch: int,
        on_batch: Callable[[list[Incoming]], None],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.broker, self.queues, self.prefetch = broker, list(queues), max(1, prefetch)
        self._on_batch, self._loop = on_batch, loop
        self._channel = broker.channel()
        self._channel_id = 1
        self._held = 0
        self._consuming = True
        self.connected = False
        self._next_queue = 0

    async def start(self) -> None:
        for queue in self.queues:
            try:
                self._channel.queue_declare(queue, passive=True)
            except ChannelError:
                self._channel = self.broker.channel()
                raise AmqpTasksError(
                    f"queue {queue!r} does not exist on the broker; declare it in the YAML and run "
                    "'amqptasks topology apply', or check the -Q names"
                ) from None
        self.connected = True

    @property
    def held(self) -> int:
        """Deliveries handed to the worker and not settled yet."""
        return self._held

    def ready(self) -> int:
        """Messages ready in the consumed queues (what the next pumps can deliver)."""
        self.broker.tick()
        return sum(len(q.ready) for name in self.queues if (q := self.broker.queues.get(name)) is not None)

    def pump(self) -> int:
        """Hand the worker what is ready, up to the prefetch; returns how many were delivered."""
        if not (self._consuming and self.connected):
            return 0
        batch: list[Incoming] = []
        empty = 0
        while self._held + len(batch) < self.prefetch and empty < len(self.queues):
            queue = self.queues[self._next_queue % len(self.queues)]
            self._next_queue += 1
            got = self._channel.basic_get(queue) if queue in self.broker.queues else None
            if got is None:
                empty += 1
                continue
            empty = 0
            p = got.properties
            batch.append(Incoming(
                got.body, dict(p["headers"]) if p.get("headers") is not None else None, p.get("content_type"),
                p.get("content_encoding"), p.get("correlation_id"), p.get("reply_to"), p.get("priority"),
                got.redelivered, got.exchange, got.routing_key, got.delivery_tag, queue, self._channel_id,
            ))  # fmt: skip
        self._held += len(batch)
        if batch:
            self._on_batch(batch)
        return len(batch)

    def is_stale(self, incoming: Incoming) -> bool:
        return incoming.channel != self._channel_id or not self.connected

    def settle(self, incoming: Incoming, how: str) -> None:
        """ "ack", "reject" (dead-letter) or "requeue", at once."""
        self._held = max(0, self._held - 1)
        tag = incoming.delivery_tag
        if how == "ack":
            self._channel.basic_ack(tag)
        elif how == "reject":
            self._channel.basic_reject(tag, requeue=False)
        else:
            self._channel.basic_nack(tag, requeue=True)

    async def cancel(self) -> None:
        self._consuming = False

    async def close(self) -> None:
        """Unsettled deliveries go back to their queues (redelivered), as when a connection closes."""
        self.connected = False
        self._channel.close()
