"""``self.request``: what a running task knows about the message that started it."""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from amqptasks.message.protocol import TaskMessage

if TYPE_CHECKING:
    from amqptasks.worker.delivery import Delivery


@dataclass(frozen=True)
class Request:
    id: str
    task: str
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]
    retries: int
    delivery_info: Mapping[str, Any]
    headers: Mapping[str, Any]
    reply_to: str | None
    eta: datetime | None
    expires: datetime | None
    hostname: str
    redelivered: bool
    root_id: str | None
    parent_id: str | None
    message: TaskMessage = field(repr=False)
    #: Run by ``Task.apply()`` (here and now, not by a worker), as Celery's ``request.is_eager``.
    eager: bool = False
    #: The task was called like a function (``add(2, 3)``), as Celery's ``request.called_directly``.
    called_directly: bool = False

    @property
    def is_eager(self) -> bool:
        return self.eager


#: The request of the task running in this context (asyncio task or thread); None outside a task.
current: contextvars.ContextVar[Request | None] = contextvars.ContextVar("amqptasks_request", default=None)


def request_for(d: Delivery, hostname: str) -> Request:
    """The request of the task a delivery runs, on worker *hostname* (its message decoded)."""
    m, raw = d.message, d.raw
    assert m is not None
    return Request(
        id=m.id, task=m.task, args=m.args, kwargs=m.kwargs, retries=m.retries,
        delivery_info={"exchange": d.exchange, "routing_key": raw.routing_key, "queue": d.queue,
                       "priority": raw.priority, "redelivered": raw.redelivered},
        headers=dict(raw.headers or {}), reply_to=m.reply_to, eta=m.eta, expires=m.expires,
        hostname=hostname, redelivered=bool(raw.redelivered), root_id=m.root_id,
        parent_id=m.parent_id, message=m,
    )  # fmt: skip
