"""Periodic entries and their run times (pure: no I/O, no pika).

Entries come from the YAML ``beat:`` section and from code::

    from amqptasks.beat import periodic

    periodic(app, "ping", "health.ping", every=30)  # or every="30s", every=timedelta(seconds=30)
    periodic(app, "report", report_task, cron=crontab(minute=0, hour=9, day_of_week="mon-fri"))
    periodic(app, "cleanup", cleanup_task, cron="0 3 * * mon", kwargs={"days": 7}, options={"queue": "low"})

Run times:

* ``every`` counts from a fixed epoch (2000-01-01 00:00 UTC), not from start-up, so a restart or a takeover by
  another beat keeps the cadence: an entry every 5 m runs at :00, :05, :10... whoever sends it.
* ``cron`` is read in the entry's time zone (``beat.timezone``, default UTC), so ``0 3 * * *`` stays 03:00 local
  across daylight-saving changes.

A run is identified by its scheduled time: its task id is ``beat:<entry>:<scheduled time, ISO 8601 UTC>``, the
same in every beat process, so a consumer can spot a run sent twice.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from amqptasks.config.diagnostics import Diagnostics
from amqptasks.config.tasks_model import Beat, BeatEntry

if TYPE_CHECKING:
    from amqptasks.app import App
    from amqptasks.tasks.task import Task

#: ``every`` cadences count from here, so every beat process computes the same run times.
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
#: Options a beat entry may pass to ``send_task``.
ENTRY_OPTIONS = frozenset({"queue", "exchange", "routing_key", "priority", "expires", "headers"})

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", re.IGNORECASE)


def parse_every(value: float | str | timedelta) -> float:
    """An interval in seconds, from a number of seconds, a ``timedelta``, or ``"250ms"``, ``"30s"``, ``"5m"``,
    ``"1h"``, ``"1d"``."""
    if isinstance(value, bool):
        raise ValueError(f"expected seconds or a duration such as '30s', got {value!r}")
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match is None:
            raise ValueError(f"expected seconds or a duration such as '30s', '5m', '1h', got {value!r}")
        seconds = float(match.group(1)) * _UNITS[(match.group(2) or "s").lower()]
    else:
        raise ValueError(f"expected seconds, a timedelta or a duration such as '30s', got {value!r}")
    if seconds < 0.001:
        raise ValueError(f"the interval must be positive, got {value!r}")
    return seconds


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (an IANA name such as 'Europe/Paris' or 'UTC')") from None


@dataclass(frozen=True)
class crontab:  # Celery's (lowercase) name
    """A cron schedule in code, as Celery's ``crontab(minute="*/15", hour="9-17", day_of_week="mon-fri")``.

    Each field takes what a cron field takes (a number, ``*``, ``*/N``, ranges, lists, day and month names);
    unset fields are ``*``. ``expression`` is the five-field cron line it stands for.
    """

    minute: str | int = "*"
    hour: str | int = "*"
    day_of_week: str | int = "*"
    day_of_month: str | int = "*"
    month_of_year: str | int = "*"

    def __post_init__(self) -> None:
        if not croniter.is_valid(self.expression):
            raise ValueError(
                f"{self!r} is not a valid schedule (cron line {self.expression!r}: minute 0-59, hour 0-23, "
                "day_of_month 1-31, month_of_year 1-12 or jan-dec, day_of_week 0-6 or sun-sat)"
            )

    @property
    def expression(self) -> str:
        return f"{self.minute} {self.hour} {self.day_of_month} {self.month_of_year} {self.day_of_week}"


@dataclass(frozen=True)
class Entry:
    """One periodic task: what to send, and when."""

    name: str
    task: str
    every: float | None = None  # seconds
    cron: str | None = None
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    timezone: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))

    def __post_init__(self) -> None:
        if (self.every is None) == (self.cron is None):
            raise ValueError(f"beat entry {self.name!r}: give exactly one of every and cron")
        if self.every is not None and self.every <= 0:
            raise ValueError(f"beat entry {self.name!r}: every must be positive")
        if self.cron is not None and not croniter.is_valid(self.cron):
            raise ValueError(f"beat entry {self.name!r}: invalid cron expression {self.cron!r}")
        unknown = set(self.options) - ENTRY_OPTIONS
        if unknown:
            raise ValueError(
                f"beat entry {self.name!r}: unknown options {sorted(unknown)} (known: {sorted(ENTRY_OPTIONS)})"
            )

    def next_after(self, moment: datetime) -> datetime:
        """The first scheduled time strictly after *moment* (an aware datetime), in UTC."""
        if self.every is not None:
            step_us = max(1, round(self.every * 1_000_000))
            elapsed_us = (moment - EPOCH) // timedelta(microseconds=1)
            return EPOCH + timedelta(microseconds=(elapsed_us // step_us + 1) * step_us)
        assert self.cron is not None
        local = moment.astimezone(self.timezone)
        return croniter(self.cron, local).get_next(datetime).astimezone(UTC)

    def describe(self) -> str:
        return f"every {self.every:g} s" if self.every is not None else f"cron '{self.cron}' ({self.timezone.key})"


def task_id(entry: str, scheduled: datetime) -> str:
    """The deterministic id of one run: ``beat:<entry>:<scheduled time>``."""
    return f"beat:{entry}:{scheduled.astimezone(UTC).isoformat(timespec='milliseconds')}"


def from_config(beat: Beat) -> dict[str, Entry]:
    """The YAML entries (already validated by :func:`check`)."""
    tz = zone(beat.timezone)
    return {
        name: Entry(
            name=name,
            task=spec.task,
            every=parse_every(spec.every) if spec.every is not None else None,
            cron=spec.cron,
            args=spec.args,
            kwargs=dict(spec.kwargs),
            options=spec.options.given(),
            timezone=tz,
        )
        for name, spec in beat.entries.items()
    }


def check(beat: Beat, diags: Diagnostics) -> None:
    """Load-time checks of the ``beat:`` section: time zone, every/cron."""
    try:
        zone(beat.timezone)
    except ValueError as exc:
        diags.error(beat.where("timezone"), f"beat: timezone: {exc}")
    for name, spec in beat.entries.items():
        _check_entry(name, spec, diags)


def _check_entry(name: str, spec: BeatEntry, diags: Diagnostics) -> None:
    what = f"beat entry {name!r}"
    if (spec.every is None) == (spec.cron is None):
        diags.error(spec.loc, f"{what}: give exactly one of 'every' (an interval) and 'cron' (a cron expression)")
    if spec.every is not None:
        try:
            parse_every(spec.every)
        except ValueError as exc:
            diags.error(spec.where("every"), f"{what}: every: {exc}")
    if spec.cron is not None and not croniter.is_valid(spec.cron):
        diags.error(
            spec.where("cron"),
            f"{what}: invalid cron expression {spec.cron!r} (5 fields: minute hour day-of-month month day-of-week)",
        )


# Entries declared in code, per app. Weak keys: the registry never keeps an app alive.
_REGISTRY: weakref.WeakKeyDictionary[App, dict[str, Entry]] = weakref.WeakKeyDictionary()


def periodic(
    app: App,
    name: str,
    task: str | Task[Any, Any],
    *,
    every: float | str | timedelta | None = None,
    cron: str | crontab | None = None,
    schedule: float | str | timedelta | crontab | None = None,
    args: Iterable[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
    timezone: str | None = None,
) -> Entry:
    """Add a periodic entry to *app* in code (next to the YAML's ``beat.entries``; a name may not be in both).

    When: *every* (seconds, ``"5m"``, a ``timedelta``), *cron* (a cron line or a :class:`crontab`), or
    *schedule*, Celery's key, taking any of those.
    """
    task_name = task if isinstance(task, str) else task.name
    if schedule is not None:
        if every is not None or cron is not None:
            raise ValueError(f"beat entry {name!r}: give one of every, cron and schedule")
        if isinstance(schedule, crontab):
            cron = schedule
        else:
            every = schedule
    if isinstance(cron, crontab):
        cron = cron.expression
    if name in app.config.beat.entries or name in _REGISTRY.get(app, {}):
        raise ValueError(f"beat entry {name!r} is already defined")
    entry = Entry(
        name=name,
        task=task_name,
        every=parse_every(every) if every is not None else None,
        cron=cron,
        args=tuple(args),
        kwargs=dict(kwargs or {}),
        options=dict(options or {}),
        timezone=zone(timezone or app.config.beat.timezone),
    )
    _REGISTRY.setdefault(app, {})[name] = entry
    return entry


def entries_of(app: App) -> dict[str, Entry]:
    """Every entry of *app*: the YAML's, then those added in code."""
    return {**from_config(app.config.beat), **_REGISTRY.get(app, {})}
