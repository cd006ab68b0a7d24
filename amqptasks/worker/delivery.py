"""One received message on its way through the worker: raw delivery, decoded task, how it was settled."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from amqptasks.constants import DELAY_TARGET_HEADER

if TYPE_CHECKING:
    from amqptasks.message.protocol import TaskMessage
    from amqptasks.tasks.task import Task
    from amqptasks.worker.request import Request
    from amqptasks.worker.transport import Incoming


@dataclass
class Delivery:
    raw: Incoming
    queue: str
    received: float = field(default_factory=time.monotonic)
    message: TaskMessage | None = None
    task: Task[Any, Any] | None = None
    request: Request | None = None
    started: float | None = None
    #: "ack", "reject", "requeue" once settled; a message is settled exactly once.
    settled: str | None = None
    #: Why something its workflow needs (next chain step, chord hand-off, callback, errback) was not published:
    #: set by the results middleware, and then the message is not acked as if all were well (worker/failure.py).
    handoff_error: BaseException | None = None

    @property
    def label(self) -> str:
        if self.message is None:
            return f"message {self.raw.correlation_id or self.raw.delivery_tag} from {self.queue!r}"
        return f"{self.message.task}[{self.message.id}]"

    @property
    def exchange(self) -> str:
        """The exchange the message was sent to ("" for a queue), not the delay tier it may have come from."""
        return self.destination().get("exchange", "")

    def destination(self) -> dict[str, str]:
        """Where this message was originally sent: a retry goes back there, through the delay tiers if needed.

        A message that waited in the delay tiers arrives from a tier exchange; its original target travels
        in a header, and its routing key is the original one.
        """
        target = str((self.raw.headers or {}).get(DELAY_TARGET_HEADER, ""))
        kind, _, name = target.partition(":")
        if kind == "queue":
            return {"queue": name}
        exchange = name if kind == "exchange" else (self.raw.exchange or "")
        if exchange == "":
            return {"queue": self.raw.routing_key or self.queue}
        return {"exchange": exchange, "routing_key": self.raw.routing_key or ""}


#: How the worker settles a delivery, exactly once: ``settle(delivery, "ack" | "reject" | "requeue", why)``.
Settle = Callable[[Delivery, str, str], None]
