"""A received message → the registered task it names, run in this process.

The worker builds on this (acks, retries, limits); it is also what proves that messages from a real
Celery client decode and dispatch correctly.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from amqptasks.message.errors import MessageError
from amqptasks.message.protocol import TaskMessage, from_amqp

if TYPE_CHECKING:
    from amqptasks.app import App
    from amqptasks.tasks.task import Task


class UnknownTask(MessageError):
    def __init__(self, name: str) -> None:
        super().__init__("unknown-task", f"no task named {name!r} is registered in this app")


def decode(
    body: bytes, headers: Mapping[str, Any] | None, content_type: str | None, content_encoding: str | None,
    correlation_id: str | None = None, reply_to: str | None = None, max_size: int | None = None,
) -> TaskMessage:  # fmt: skip
    return from_amqp(
        body,
        headers,
        content_type=content_type,
        content_encoding=content_encoding,
        correlation_id=correlation_id,
        reply_to=reply_to,
        max_size=max_size,
    )


def find_task(app: App, message: TaskMessage) -> Task[Any, Any]:
    task = app.tasks.get(message.task)
    if task is None:
        raise UnknownTask(message.task)
    try:
        task.check_arguments(message.args, message.kwargs)
    except TypeError as exc:
        raise MessageError("bad-arguments", str(exc)) from None
    return task


def execute(app: App, message: TaskMessage) -> Any:
    """Run the task a message names with its arguments; async tasks are awaited on a fresh loop."""
    task = find_task(app, message)
    result = task(*message.args, **message.kwargs)
    if inspect.isawaitable(result):
        import asyncio

        async def wait() -> Any:
            return await result

        return asyncio.run(wait())
    return result
