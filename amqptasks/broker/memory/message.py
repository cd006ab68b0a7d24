"""A message as the in-memory broker holds it (pure data).

``Message`` is what was published (body, basic properties, where it was sent); queues hold ``Stored`` entries that
add what a queue knows about its copy: when it entered, when it expires, whether it was delivered before.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = ["PROPERTY_NAMES", "Message", "Stored"]

#: AMQP 0-9-1 basic properties, in pika's spelling.
PROPERTY_NAMES = (
    "content_type", "content_encoding", "headers", "delivery_mode", "priority", "correlation_id", "reply_to",
    "expiration", "message_id", "timestamp", "type", "user_id", "app_id", "cluster_id",
)  # fmt: skip


@dataclass(frozen=True)
class Message:
    body: bytes
    #: Basic properties by pika's names; absent ones are left out (``headers`` is a dict when present).
    properties: Mapping[str, Any] = field(default_factory=dict)
    exchange: str = ""
    routing_key: str = ""

    @property
    def headers(self) -> Mapping[str, Any]:
        return self.properties.get("headers") or {}

    @property
    def priority(self) -> int:
        value = self.properties.get("priority")
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    @property
    def expiration_ms(self) -> int | None:
        """The per-message TTL (the ``expiration`` property holds milliseconds as a string)."""
        value = self.properties.get("expiration")
        if value is None:
            return None
        try:
            return max(0, int(value))
        except (TypeError, ValueError):
            return None

    def with_headers(self, headers: Mapping[str, Any]) -> Message:
        return replace(self, properties={**self.properties, "headers": dict(headers)})

    @classmethod
    def of(cls, body: bytes, exchange: str, routing_key: str, **properties: Any) -> Message:
        unknown = set(properties) - set(PROPERTY_NAMES)
        if unknown:
            raise TypeError(f"unknown basic properties: {', '.join(sorted(unknown))}")
        props = {k: v for k, v in properties.items() if v is not None}
        if "headers" in props:
            props["headers"] = dict(props["headers"])
        return cls(bytes(body), props, exchange, routing_key)


@dataclass
class Stored:
    """One queue's copy of a message."""

    message: Message
    #: Arrival order in its queue: a requeued message goes back to its place.
    seq: int
    #: Broker time (seconds) when it expires; None: never.
    expires_at: float | None
    priority: int = 0
    redelivered: bool = False
    #: Quorum queues: how often it was returned (x-delivery-count).
    delivery_count: int = 0

    @property
    def size(self) -> int:
        return len(self.message.body)
