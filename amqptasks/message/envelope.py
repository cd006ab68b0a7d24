"""What a publisher sends: one AMQP message with its destination (pure data, no pika)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: AMQP delivery_mode for messages that survive a broker restart (on durable queues).
PERSISTENT = 2


@dataclass(frozen=True, slots=True)
class Envelope:
    exchange: str
    routing_key: str
    body: bytes
    headers: Mapping[str, Any] = field(default_factory=dict)
    content_type: str = "application/json"
    content_encoding: str = "utf-8"
    correlation_id: str | None = None
    reply_to: str | None = None
    priority: int | None = None
    #: Per-message TTL in ms (AMQP ``expiration``); applies in every queue the message passes.
    expiration: int | None = None
    delivery_mode: int = PERSISTENT
    #: Ask the broker to return the message if no queue gets it (raises UnroutableError).
    mandatory: bool = True

    def properties(self) -> dict[str, Any]:
        """The AMQP basic properties, as keyword arguments for pika's or aiormq's properties class."""
        return {
            "content_type": self.content_type,
            "content_encoding": self.content_encoding,
            "headers": dict(self.headers) if self.headers else None,
            "delivery_mode": self.delivery_mode,
            "priority": self.priority,
            "correlation_id": self.correlation_id,
            "reply_to": self.reply_to,
            # AMQP's expiration is a shortstr holding milliseconds.
            "expiration": None if self.expiration is None else str(self.expiration),
        }

    def describe(self) -> str:
        exchange = repr(self.exchange) if self.exchange else "the default exchange"
        return f"message {self.correlation_id or ''} to {exchange} with routing key {self.routing_key!r}".replace(
            "message  ", "message "
        )
