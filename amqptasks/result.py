"""The handle a publish returns. Result backends (state, get()) arrive with the results issue."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AsyncResult:
    """A published task: ``id`` is its task id (AMQP correlation_id and ``id`` header)."""

    id: str
    task_name: str = ""

    def __str__(self) -> str:
        return self.id
