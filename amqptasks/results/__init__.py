"""Task results: states, backends (``rpc://``, ``redis://``) and the worker middleware that reports them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from amqptasks.errors import AmqpTasksError
from amqptasks.results.backend import ResultBackend
from amqptasks.results.exceptions import TaskError

if TYPE_CHECKING:
    from amqptasks.app import App

__all__ = ["ResultBackend", "TaskError", "backend_for"]


def backend_for(app: App) -> ResultBackend | None:
    """The backend the app's YAML ``results:`` section selects (None: results are not kept)."""
    settings = app.config.results
    url = settings.backend
    if url is None or url in ("", "none"):
        return None
    if url == "rpc://":
        from amqptasks.results.rpc import RpcBackend

        return RpcBackend(app)
    if url.startswith("memory://"):
        from amqptasks.results.memory import MemoryBackend

        return MemoryBackend(url)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from amqptasks.results.redis import RedisBackend

        return RedisBackend(url, settings.result_expires)
    raise AmqpTasksError(
        f"results.backend {url!r} is not supported: use 'rpc://', 'redis://host:6379/0', 'memory://' (tests), "
        "or leave it out"
    )
