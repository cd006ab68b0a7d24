"""One queue of the in-memory broker (pure: time is passed in): ordering, TTL, length limits, redelivery.

- Order: highest priority first (classic queues with ``x-max-priority``; a priority above it counts as the
  maximum), then arrival. A classic queue puts a requeued message back in its old place. A quorum queue (3.10)
  puts a returned message at the back -- or, when it has an ``x-delivery-limit``, serves returned messages
  first, in the order they came back.
- TTL: the shorter of ``x-message-ttl`` and the message's ``expiration``, counted from arrival. A message expires
  only at the head of its queue (of its priority level): one behind a longer-lived head waits.
- Limits: ``x-max-length`` and ``x-max-length-bytes`` (bodies) count ready messages. ``drop-head`` drops from the
  head after storing, ``reject-publish`` refuses the newcomer, ``reject-publish-dlx`` refuses and dead-letters it.
- Quorum ``x-delivery-limit``: a message returned more often than the limit is dead-lettered (``delivery_limit``).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from amqptasks.broker.memory.message import Message, Stored

__all__ = ["Dropped", "MemoryQueue"]

#: (message, reason) pairs the queue let go of and the broker dead-letters: expired, maxlen, delivery_limit.
Dropped = list[tuple[Message, str]]


def _int_arg(arguments: Mapping[str, Any], key: str) -> int | None:
    value = arguments.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


@dataclass
class MemoryQueue:
    name: str
    durable: bool = True
    exclusive: bool = False
    auto_delete: bool = False
    arguments: dict[str, Any] = field(default_factory=dict)
    #: Ready messages, ordered by ``_key``.
    ready: list[Stored] = field(default_factory=list)
    #: Delivered, not yet settled (held by channels; counted here for the queue's figures).
    unacked: int = 0
    #: Broker time of the last use (declare, get, consume), for ``x-expires``.
    last_used: float = 0.0
    _seq: int = 0
    _returns: int = 0

    @property
    def kind(self) -> str:
        return str(self.arguments.get("x-queue-type", "classic"))

    @property
    def max_priority(self) -> int | None:
        return None if self.kind != "classic" else _int_arg(self.arguments, "x-max-priority")

    @property
    def overflow(self) -> str:
        return str(self.arguments.get("x-overflow", "drop-head"))

    @property
    def dead_letter_exchange(self) -> str | None:
        value = self.arguments.get("x-dead-letter-exchange")
        return None if value is None else str(value)

    @property
    def dead_letter_routing_key(self) -> str | None:
        value = self.arguments.get("x-dead-letter-routing-key")
        return None if value is None else str(value)

    @property
    def expires_ms(self) -> int | None:
        return _int_arg(self.arguments, "x-expires")

    def description(self) -> dict[str, Any]:
        """The properties a redeclaration is compared against."""
        return {"durable": self.durable, "auto_delete": self.auto_delete, "arguments": self.arguments}

    # --- storing ----------------------------------------------------------------------------------------

    def _key(self, stored: Stored) -> tuple[int, int, int]:
        returned = 0 if self._returns_first and stored.delivery_count else 1
        return (-stored.priority, returned, stored.seq)

    @property
    def _returns_first(self) -> bool:
        return self.kind == "quorum" and _int_arg(self.arguments, "x-delivery-limit") is not None

    def _insert(self, stored: Stored) -> None:
        keys = [self._key(s) for s in self.ready]
        self.ready.insert(bisect.bisect(keys, self._key(stored)), stored)

    def _ttl_ms(self, message: Message) -> int | None:
        ttls = [t for t in (_int_arg(self.arguments, "x-message-ttl"), message.expiration_ms) if t is not None]
        return min(ttls) if ttls else None

    def would_overflow(self, message: Message) -> bool:
        """Whether storing *message* would go over a limit (what reject-publish refuses)."""
        max_length = _int_arg(self.arguments, "x-max-length")
        max_bytes = _int_arg(self.arguments, "x-max-length-bytes")
        if max_length is not None and len(self.ready) + 1 > max_length:
            return True
        return max_bytes is not None and self.ready_bytes() + len(message.body) > max_bytes

    def ready_bytes(self) -> int:
        return sum(s.size for s in self.ready)

    def store(self, message: Message, now: float) -> tuple[bool, Dropped]:
        """Store a published or dead-lettered message: (accepted, what overflow dropped to dead-letter)."""
        if self.overflow in ("reject-publish", "reject-publish-dlx") and self.would_overflow(message):
            return False, [(message, "maxlen")] if self.overflow == "reject-publish-dlx" else []
        ttl = self._ttl_ms(message)
        priority = message.priority
        limit = self.max_priority
        priority = 0 if limit is None else max(0, min(priority, limit))
        self._seq += 1
        self._insert(Stored(message, self._seq, None if ttl is None else now + ttl / 1000, priority))
        return True, self._drop_head()

    def _drop_head(self) -> Dropped:
        dropped: Dropped = []
        max_length = _int_arg(self.arguments, "x-max-length")
        max_bytes = _int_arg(self.arguments, "x-max-length-bytes")
        while self.ready and (
            (max_length is not None and len(self.ready) > max_length)
            or (max_bytes is not None and self.ready_bytes() > max_bytes)
        ):
            dropped.append((self.ready.pop(0).message, "maxlen"))
        return dropped

    # --- time -------------------------------------------------------------------------------------------

    def _heads(self) -> list[int]:
        """Index of the head of each priority level (each level expires at its own head, as in RabbitMQ)."""
        heads, seen = [], set()
        for i, stored in enumerate(self.ready):
            if stored.priority not in seen:
                seen.add(stored.priority)
                heads.append(i)
        return heads

    def expire(self, now: float) -> Dropped:
        """Remove the messages expired at a head, repeatedly (the next one may have expired too)."""
        dropped: Dropped = []
        while True:
            due = [i for i in self._heads() if (e := self.ready[i].expires_at) is not None and e <= now]
            if not due:
                return dropped
            for i in reversed(due):
                dropped.append((self.ready.pop(i).message, "expired"))

    def next_expiry(self) -> float | None:
        times = [e for i in self._heads() if (e := self.ready[i].expires_at) is not None]
        return min(times, default=None)

    # --- delivering -------------------------------------------------------------------------------------

    def take(self, now: float) -> tuple[Stored | None, Dropped]:
        """The next message to deliver (expired heads dropped first)."""
        dropped = self.expire(now)
        self.last_used = now
        if not self.ready:
            return None, dropped
        stored = self.ready.pop(0)
        self.unacked += 1
        return stored, dropped

    def settled(self) -> None:
        self.unacked = max(0, self.unacked - 1)

    def requeue(self, stored: Stored) -> Dropped:
        """A delivery given back (nack/reject with requeue, or its channel closed)."""
        self.settled()
        stored.redelivered = True
        if self.kind == "quorum":
            stored.delivery_count += 1
            limit = _int_arg(self.arguments, "x-delivery-limit")
            if limit is not None and stored.delivery_count > limit:
                return [(stored.message, "delivery_limit")]
            if self._returns_first:
                self._returns += 1
                stored.seq = self._returns  # served before the others, in the order they came back
            else:
                self._seq += 1
                stored.seq = self._seq  # to the back
        self._insert(stored)
        return []

    def purge(self) -> int:
        count = len(self.ready)
        self.ready.clear()
        return count
