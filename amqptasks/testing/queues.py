"""``messages(app, queue)``: what a memory:// queue holds, read without consuming it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from amqptasks.testing.drain import memory_broker

if TYPE_CHECKING:
    from amqptasks.app import App

__all__ = ["QueuedMessage", "advance", "messages"]


@dataclass(frozen=True)
class QueuedMessage:
    body: bytes
    #: AMQP headers, ``x-death`` (reason, count, queue, exchange, routing-keys, time) included.
    headers: Mapping[str, Any]
    #: The other basic properties (content_type, correlation_id, priority, expiration, reply_to...).
    properties: Mapping[str, Any]
    exchange: str
    routing_key: str
    redelivered: bool

    @property
    def task(self) -> str | None:
        value = self.headers.get("task")
        return None if value is None else str(value)

    @property
    def task_id(self) -> str | None:
        value = self.headers.get("id", self.properties.get("correlation_id"))
        return None if value is None else str(value)

    @property
    def death_reason(self) -> str | None:
        """The reason of the latest dead-lettering (``rejected``, ``expired``, ``maxlen``, ``delivery_limit``)."""
        deaths = self.headers.get("x-death") or []
        return str(deaths[0].get("reason")) if deaths else None

    def json(self) -> Any:
        """The body decoded as JSON (a task message: ``[args, kwargs, embed]``)."""
        return json.loads(self.body)


def messages(app: App, queue: str) -> list[QueuedMessage]:
    """What *queue* holds, in the order a consumer would get it; nothing is consumed or marked redelivered."""
    app._ensure_provisioned()
    out = []
    for peeked in memory_broker(app).peek(queue):
        properties = {k: v for k, v in peeked.properties.items() if k != "headers"}
        out.append(QueuedMessage(peeked.body, dict(peeked.headers), properties, peeked.exchange,
                                 peeked.routing_key, peeked.redelivered))  # fmt: skip
    return out


def advance(app: App, seconds: float) -> None:
    """Move the memory:// broker's clock *seconds* ahead (messages due on the way expire, in order)."""
    memory_broker(app).advance(seconds)
