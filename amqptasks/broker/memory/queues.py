"""One queue of the in-memory broker (pure: time is passed in): ordering, TTL, length limits, redelivery.

- Order: highest priority first (classic queues with ``x-max-priority``; a priority above it counts as the
  maximum), then arrival. A classic queue puts a requeued message back in its old place. A quorum queue (3.10)
  puts a returned message at the back -- or, when it has an ``x-delivery-limit``, serves returned messages
  first, in the order they came back.
- TTL: the shorter of ``x-message-ttl`` and the message's ``expiration``, counted from arrival. Messages expire
  only at the head of the queue, and only when the queue looks, as rabbit_amqqueue_process does: a TTL timer set
  for the head's expiry, looked at again when it fires, when a message becomes the only one, when overflow drops
  one, after a delivery and after a requeue. So one behind a longer-lived head waits; and on a priority queue, a
  short-lived message that goes ahead of the head does not move the timer (RabbitMQ 3.10 assumes new messages go
  to the back), nor does a delivery check what it hands out.
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
    #: When the queue next looks for expired messages at its head (RabbitMQ's ttl timer); None: no timer.
    timer: float | None = None
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
        self.ready.insert(bisect.bisect(self.ready, self._key(stored), key=self._key), stored)

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
        dropped = self._drop_head()
        if dropped or len(self.ready) == 1:  # rabbit_amqqueue_process only looks then (see the module docstring)
            dropped += self._look(now)
        return True, dropped

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

    def _look(self, now: float) -> Dropped:
        """drop_expired_msgs: drop expired messages from the head, then set the timer for the new head."""
        dropped: Dropped = []
        while self.ready and (e := self.ready[0].expires_at) is not None and e <= now:
            dropped.append((self.ready.pop(0).message, "expired"))
        # ensure_ttl_timer: a timer already set stays unless this one is due more than 1 ms sooner.
        expiry = self.ready[0].expires_at if self.ready else None
        if expiry is not None and (self.timer is None or expiry + 0.001 < self.timer):
            self.timer = expiry
        return dropped

    def expire(self, now: float) -> Dropped:
        """The TTL timer fired, if it is due: look at the head."""
        if self.timer is None or self.timer > now:
            return []
        self.timer = None
        return self._look(now)

    def next_expiry(self) -> float | None:
        return self.timer

    # --- delivering -------------------------------------------------------------------------------------

    def take(self, now: float) -> tuple[Stored | None, Dropped]:
        """The next message to deliver, and what the look after the delivery dropped (the delivered message itself
        is not checked: a due timer has fired before, in :meth:`expire`)."""
        self.last_used = now
        if not self.ready:
            return None, []
        stored = self.ready.pop(0)
        self.unacked += 1
        return stored, self._look(now)

    def settled(self) -> None:
        self.unacked = max(0, self.unacked - 1)

    def requeue(self, stored: Stored, now: float) -> Dropped:
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
        return self._look(now)

    def purge(self) -> int:
        count = len(self.ready)
        self.ready.clear()
        return count
