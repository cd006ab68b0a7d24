"""``self.request``: what a running task knows about the message that started it."""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from amqptasks.message.protocol import TaskMessage


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

    @property
    def is_eager(self) -> bool:
        return False


#: The request of the task running in this context (asyncio task or thread); None outside a task.
current: contextvars.ContextVar[Request | None] = contextvars.ContextVar("amqptasks_request", default=None)
