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
    #: Routing keys the ``CC`` and ``BCC`` headers added when it was published (sender-selected distribution);
    #: a dead letter keeps them unless its queue sets ``x-dead-letter-routing-key``.
    cc: tuple[str, ...] = ()
    bcc: tuple[str, ...] = ()

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

    @property
    def routing_keys(self) -> list[str]:
        """Every key it is routed with: its routing key, then CC's and BCC's."""
        return [self.routing_key, *self.cc, *self.bcc]

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


def _keys(value: Any) -> list[str]:
    if not isinstance(value, list | tuple):
        return []
    return [v.decode() if isinstance(v, bytes) else v for v in value if isinstance(v, str | bytes)]


def addressed(message: Message) -> Message:
    """*message* as published: the keys of its ``CC`` and ``BCC`` headers taken, ``BCC`` removed (as RabbitMQ)."""
    headers = message.headers
    if "CC" not in headers and "BCC" not in headers:
        return message
    kept = {k: v for k, v in headers.items() if k != "BCC"}
    return replace(message.with_headers(kept), cc=tuple(_keys(headers.get("CC"))), bcc=tuple(_keys(headers.get("BCC"))))


def expiration_error(value: Any) -> str | None:
    """Why RabbitMQ refuses an ``expiration`` property (rabbit_basic:parse_expiration), in its words; None if valid."""
    if value is None:
        return None
    text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    digits = len(text) - len(text.lstrip("+-"))
    sign, rest = text[: min(digits, 1)], text[min(digits, 1) :]
    number = rest[: len(rest) - len(rest.lstrip("0123456789"))]
    if not number:
        return f"invalid expiration '{text}': no_integer"
    left = rest[len(number) :]
    if left:
        return f"invalid expiration '{text}': {{leftover_string,\"{left}\"}}"
    if sign == "-" and int(number) != 0:
        return f"invalid expiration '{text}': {{value_negative,-{int(number)}}}"
    return None


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
