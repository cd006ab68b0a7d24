"""YAML sections about tasks: routes and per-task settings (pure data, like model.py)."""

from __future__ import annotations

from collections.abc import Mapping
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
    max_redeliveries: int | None = field(
        default=None,
        metadata=_doc(
            "A task that kills its worker process (it was running when the process died) runs at most this many "
            "times more, then goes to its DLQ as 'worker-lost' [5]. Tasks that had not started are never counted."
        ),
    )


@dataclass(frozen=True, kw_only=True)
class Results(Located):
    """Where task results go, so that ``AsyncResult.get()`` can wait for them."""

    LABEL: ClassVar[str] = "results"
    backend: str | None = field(
        default=None,
        metadata=_doc(
            "'rpc://' (RabbitMQ direct reply-to: results go back to the publishing process, nothing is stored), "
            "'redis://host:6379/0' (needs the redis extra), or null: no results."
        ),
    )
    result_expires: int = field(
        default=86_400,
        metadata=_doc("Seconds a stored result (redis) and a chord's result queue are kept (default one day)."),
    )


@dataclass(frozen=True, kw_only=True)
class BeatOptions(Located):
    """How a periodic task is published: the ``send_task`` options it gets."""

    LABEL: ClassVar[str] = "options"
    queue: str | None = field(default=None, metadata=_doc("Publish straight to this queue (default exchange)."))
    exchange: str | None = field(default=None, metadata=_doc("Exchange to publish to."))
    routing_key: str | None = field(default=None, metadata=_doc("Routing key."))
    priority: int | None = field(default=None, metadata=_doc("Message priority (the queue needs max_priority)."))
    expires: float | None = field(default=None, metadata=_doc("Seconds after publishing when the task expires."))

    def given(self) -> dict[str, Any]:
        from amqptasks.config.convert import public_fields

        return {f.name: getattr(self, f.name) for f in public_fields(type(self)) if getattr(self, f.name) is not None}


@dataclass(frozen=True, kw_only=True)
class BeatEntry(Located):
    """A periodic task, published by ``amqptasks beat``: give exactly one of ``every`` and ``cron``."""

    LABEL: ClassVar[str] = "beat entry"
    task: str = field(metadata=_doc("Name of the task to send."))
    every: float | str | None = field(
        default=None, metadata=_doc("Interval: seconds, or '250ms', '30s', '5m', '1h', '1d'.")
    )
    cron: str | None = field(default=None, metadata=_doc("Cron expression ('0 3 * * mon'), in beat's timezone."))
    args: tuple[str | int | float | bool, ...] = field(default=(), metadata=_doc("Positional arguments."))
    kwargs: Mapping[str, Any] = field(default_factory=dict, metadata=_doc("Keyword arguments."))
    options: BeatOptions = field(default_factory=BeatOptions, metadata=_doc("Publishing options."))


@dataclass(frozen=True, kw_only=True)
class Beat(Located):
    """Periodic tasks, sent by one active ``amqptasks beat`` per vhost (the others stand by)."""

    LABEL: ClassVar[str] = "beat"
    timezone: str = field(default="UTC", metadata=_doc("IANA time zone of cron expressions ('Europe/Paris')."))
    entries: Mapping[str, BeatEntry] = field(default_factory=dict, metadata=_doc("Periodic tasks by name."))
