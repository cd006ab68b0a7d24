"""YAML sections about tasks: routes and per-task settings (pure data, like model.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from amqptasks.config.located import Located


def _doc(text: str) -> dict[str, Any]:
    return {"doc": text}


@dataclass(frozen=True, kw_only=True)
class Route(Located):
    """Where tasks go. Routes are tried in order; the first whose pattern matches the task's name wins."""

    LABEL: ClassVar[str] = "route"
    task: str | None = field(default=None, metadata=_doc("A task name, or a glob such as 'billing.*'."))
    regex: str | None = field(default=None, metadata=_doc("A regular expression the whole task name must match."))
    exchange: str | None = field(default=None, metadata=_doc("Exchange to publish to."))
    routing_key: str | None = field(default=None, metadata=_doc("Routing key (default: the task's name)."))
    queue: str | None = field(default=None, metadata=_doc("Publish straight to this queue (default exchange)."))
    priority: int | None = field(default=None, metadata=_doc("Message priority (the queue needs max_priority)."))


@dataclass(frozen=True, kw_only=True)
class TaskSettings(Located):
    """Options for the tasks whose name matches the key (exact or glob), like Celery's task annotations."""

    LABEL: ClassVar[str] = "task settings"
    priority: int | None = field(default=None, metadata=_doc("Default message priority."))
    max_retries: int | None = field(default=None, metadata=_doc("Retries before the task is dead-lettered."))
    default_retry_delay: float | None = field(default=None, metadata=_doc("Seconds before a retry."))
    retry_backoff: bool | int | None = field(
        default=None, metadata=_doc("Exponential backoff: true (factor 1 s) or the factor in seconds.")
    )
    retry_backoff_max: float | None = field(default=None, metadata=_doc("Longest backoff, in seconds."))
    retry_jitter: bool | None = field(default=None, metadata=_doc("Randomise backoff delays."))
    acks_late: bool | None = field(default=None, metadata=_doc("Acknowledge after the task ran (default true)."))
    time_limit: float | None = field(default=None, metadata=_doc("Hard time limit, in seconds."))
    soft_time_limit: float | None = field(default=None, metadata=_doc("Soft time limit, in seconds."))
    rate_limit: str | None = field(default=None, metadata=_doc("Rate limit per worker: '10/s', '100/m', '1000/h'."))
    expires: float | None = field(default=None, metadata=_doc("Seconds after publishing when the task expires."))
    ignore_result: bool | None = field(default=None, metadata=_doc("Do not store the result."))
    serializer: Literal["json", "msgpack"] | None = field(default=None, metadata=_doc("Body serializer."))
    compression: Literal["zlib", "gzip"] | None = field(default=None, metadata=_doc("Body compression."))

    def given(self) -> dict[str, Any]:
        """The options this entry sets (None means: not set here)."""
        from amqptasks.config.convert import public_fields

        return {f.name: getattr(self, f.name) for f in public_fields(type(self)) if getattr(self, f.name) is not None}


@dataclass(frozen=True, kw_only=True)
class WorkerProfile(Located):
    """A named worker setup: ``amqptasks worker -A app --profile NAME``."""

    LABEL: ClassVar[str] = "worker profile"
    queues: tuple[str, ...] = field(metadata=_doc("Queues to consume."))
    concurrency: int | None = field(default=None, metadata=_doc("Tasks run at once per process."))
    prefetch: int | None = field(default=None, metadata=_doc("Messages prefetched per consumer."))
    pool: Literal["asyncio", "threads", "processes"] | None = field(
        default=None, metadata=_doc("Where sync tasks run; async tasks always run on the event loop.")
    )
    processes: int | None = field(default=None, metadata=_doc("Consuming processes (one per core)."))
    max_tasks_per_child: int | None = field(default=None, metadata=_doc("Recycle pool children after N tasks."))
    grace: float | None = field(default=None, metadata=_doc("Warm shutdown: seconds to let running tasks finish."))
