"""A task call → the Envelope to publish (pure): options, routing, eta/expires, broker-side delay."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from amqptasks.config.diagnostics import did_you_mean
from amqptasks.config.tasks_model import Route
from amqptasks.constants import DEFAULT_MAX_MESSAGE_SIZE, DELAY_LEVELS, MAX_PRIORITY_LIMIT
from amqptasks.message.envelope import Envelope
from amqptasks.message.ids import new_id
from amqptasks.message.protocol import TaskMessage, to_envelope
from amqptasks.message.serialize import Compression, Serializer
from amqptasks.tasks.options import TaskOptions
from amqptasks.tasks.routing import Destination, RouteFields, find_route, resolve

#: Options ``apply_async`` / ``send_task`` accept.
APPLY_OPTIONS = frozenset(
    {
        "task_id", "countdown", "eta", "expires", "priority", "routing_key", "exchange", "queue", "headers",
        "link", "link_error", "retry", "retry_policy", "mandatory", "serializer", "compression",
        "ignore_result", "time_limit", "soft_time_limit", "root_id", "parent_id", "group_id", "group_index",
        "reply_to", "chain", "chord", "retries", "add_to_parent",
    }
)  # fmt: skip


@dataclass(frozen=True)
class Prepared:
    envelope: Envelope
    message: TaskMessage
    destination: Destination
    delay_ms: float


@dataclass(frozen=True)
class SendSettings:
    """What the app contributes: YAML routes, whether delay tiers exist, the size limit."""

    routes: Sequence[Route] = ()
    delays_enabled: bool = False
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    #: Resolved destinations by task and call routing options (see _destination); routes never change.
    destinations: dict[tuple[Any, ...], Destination] = field(default_factory=dict, compare=False, repr=False)


_DESTINATIONS_MAX = 4096


def check_apply_options(options: Mapping[str, Any], task: str) -> None:
    for key in options:
        if key not in APPLY_OPTIONS:
            raise TypeError(f"apply_async() of {task!r}: unknown option {key!r}{did_you_mean(key, APPLY_OPTIONS)}")
    if "countdown" in options and "eta" in options and options["countdown"] is not None and options["eta"]:
        raise TypeError(f"apply_async() of {task!r}: give countdown or eta, not both")
    for name in ("exchange", "routing_key", "queue"):
        value = options.get(name)
        if value is not None and not isinstance(value, str):
            raise TypeError(f"apply_async() of {task!r}: {name} must be a string, got {value!r}")
    priority = options.get("priority")
    if priority is not None and (
        isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= MAX_PRIORITY_LIMIT
    ):
        raise ValueError(
            f"apply_async() of {task!r}: priority must be an integer from 0 to {MAX_PRIORITY_LIMIT}, got {priority!r}"
        )


def _aware(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            f"{name}={value!r} is a naive datetime; give a timezone-aware one, "
            "e.g. datetime.now(timezone.utc) + timedelta(minutes=5)"
        )
    return value


def _eta(options: Mapping[str, Any], now: datetime) -> datetime | None:
    countdown, eta = options.get("countdown"), options.get("eta")
    if countdown is not None:
        if not isinstance(countdown, int | float) or countdown < 0:
            raise ValueError(f"countdown must be a number of seconds >= 0, got {countdown!r}")
        return now + timedelta(seconds=countdown)
    if eta is not None:
        if not isinstance(eta, datetime):
            raise TypeError(f"eta must be a datetime, got {type(eta).__name__}")
        return _aware(eta, "eta")
    return None


def _expires(value: Any, now: datetime) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return _aware(value, "expires")
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return now + timedelta(seconds=value)
    raise ValueError(f"expires must be seconds (> 0) or a timezone-aware datetime, got {value!r}")


def _signature_dicts(value: Any) -> tuple[Mapping[str, Any], ...]:
    if value is None:
        return ()
    items = value if isinstance(value, list | tuple) else [value]
    return tuple(dict(item) for item in items)


_NOT_SET = RouteFields()


def _destination(settings: SendSettings, task: TaskOptions, call: RouteFields) -> Destination:
    """The route for this call (the same for every call that sets the same routing options: computed once)."""
    key = (task.name, task.exchange, task.routing_key, task.queue, task.priority, call)
    found = settings.destinations.get(key)
    if found is None:
        declared = RouteFields(task.exchange, task.routing_key, task.queue, task.priority)
        found = resolve(task.name, call, find_route(settings.routes, task.name), declared)
        if len(settings.destinations) < _DESTINATIONS_MAX:
            settings.destinations[key] = found
    return found


def destination_of(task: TaskOptions, options: Mapping[str, Any], settings: SendSettings) -> Destination:
    """Where a call of *task* with these ``apply_async`` *options* is published."""
    return _destination(settings, task, _call_fields(options))


def _call_fields(options: Mapping[str, Any]) -> RouteFields:
    if not options:
        return _NOT_SET
    get = options.get
    return RouteFields(get("exchange"), get("routing_key"), get("queue"), get("priority"))


def prepare(
    task: TaskOptions,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    options: Mapping[str, Any],
    settings: SendSettings,
    now: datetime | None = None,
) -> Prepared:
    """Everything but the I/O of publishing a task: raises before anything could be sent."""
    if options:
        check_apply_options(options, task.name)
    now = now or datetime.now(UTC)
    eta = _eta(options, now)
    expires = _expires(options.get("expires", task.expires), now)
    destination = _destination(settings, task, _call_fields(options))
    serializer: Serializer = options.get("serializer") or task.serializer
    task_id = str(options.get("task_id") or new_id())
    time_limit = options.get("time_limit", task.time_limit)
    soft_limit = options.get("soft_time_limit", task.soft_time_limit)
    message = TaskMessage(
        id=task_id,
        task=task.name,
        args=tuple(args),
        kwargs=dict(kwargs),
        eta=eta,
        expires=expires,
        retries=int(options.get("retries", 0)),
        root_id=options.get("root_id") or task_id,
        parent_id=options.get("parent_id"),
        group=options.get("group_id"),
        group_index=options.get("group_index"),
        timelimit=(time_limit, soft_limit),  # Celery's order: hard first
        ignore_result=bool(options.get("ignore_result", task.ignore_result)),
        callbacks=_signature_dicts(options.get("link")),
        errbacks=_signature_dicts(options.get("link_error")),
        chain=_signature_dicts(options.get("chain")),
        chord=options.get("chord"),
        reply_to=options.get("reply_to"),
        extra_headers=dict(options.get("headers") or {}),
    )
    compression = options.get("compression") or task.compression
    return _sealed(message, destination, settings, serializer, compression, bool(options.get("mandatory", True)), now)


def _sealed(
    message: TaskMessage, destination: Destination, settings: SendSettings, serializer: Serializer,
    compression: Compression | None, mandatory: bool, now: datetime, *, capped: bool = False,
) -> Prepared:  # fmt: skip
    """The envelope of *message* to *destination*, through the delay tiers when its eta is ahead of *now*.

    *capped*: an eta beyond the tiers' longest delay (a Celery client's) waits that long, comes back early and is
    sent round again by the worker's eta check (else the tiers refuse it)."""
    envelope = to_envelope(
        message,
        exchange=destination.exchange,
        routing_key=destination.routing_key,
        priority=destination.priority,
        serializer=serializer,
        compression=compression,
        max_size=settings.max_message_size,
        mandatory=mandatory,
    )
    eta = message.eta
    delay_ms = max(0.0, (eta - now).total_seconds() * 1000) if eta else 0.0
    if delay_ms > 0:
        if capped:
            delay_ms = min(delay_ms, 2**DELAY_LEVELS - 1)
        envelope = _through_delays(envelope, destination, delay_ms, settings, message.task)
    return Prepared(envelope, message, destination, delay_ms)


def prepare_again(
    message: TaskMessage,
    destination: Destination,
    settings: SendSettings,
    *,
    serializer: Serializer = "json",
    compression: Compression | None = None,
    now: datetime | None = None,
) -> Prepared:
    """A message sent again as a fresh one (a retry, a counted redelivery, an early message back through the delay
    tiers), to *destination*, through the delay tiers when its eta is ahead.

    *message* is the original with only what the resend changes (retries, eta, headers) replaced: everything that
    makes it part of a workflow (chain, chord, group id and index, callbacks, errbacks, parent and root ids,
    reply-to, ignore_result, time limits, expiry) is the original's, so a retried step is still that step.
    """
    now = now or datetime.now(UTC)
    return _sealed(message, destination, settings, serializer, compression, True, now, capped=True)


def _through_delays(
    envelope: Envelope, destination: Destination, delay_ms: float, settings: SendSettings, task: str
) -> Envelope:
    if not settings.delays_enabled:
        raise ValueError(
            f"task {task!r}: countdown/eta need the broker-side delay tiers; add 'delays: {{enabled: true}}' to "
            "the YAML and run 'amqptasks topology apply' (amqptasks never holds delayed tasks in a worker)"
        )
    from amqptasks.delays.tiers import route

    if destination.queue is not None and destination.exchange == "":
        hop = route(delay_ms, queue=destination.queue, headers=envelope.headers)
    else:
        hop = route(delay_ms, exchange=destination.exchange, headers=envelope.headers)
    # No AMQP expiration on a delayed message: it would also count down inside the tier queues.
    return replace(envelope, exchange=hop.exchange, headers=hop.headers, expiration=None)
