"""The database schedule as a beat source: enabled rows of :class:`PeriodicTask` become beat entries."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from amqptasks.beat.schedule import Entry, zone

log = logging.getLogger("amqptasks.beat")


def entry_of(row: Any) -> Entry:
    """The beat entry of one row (``ValueError`` saying what is wrong, for the admin form and for beat)."""
    if not isinstance(row.args, list):
        raise ValueError("args must be a JSON list")
    if not isinstance(row.kwargs, dict):
        raise ValueError("kwargs must be a JSON object")
    options: dict[str, Any] = {}
    if row.queue:
        options["queue"] = row.queue
    if row.priority is not None:
        options["priority"] = row.priority
    return Entry(
        name=row.name,
        task=row.task,
        every=row.every,
        cron=row.cron or None,
        args=tuple(row.args),
        kwargs=dict(row.kwargs),
        options=options,
        timezone=zone(row.timezone or "UTC"),
    )


class DatabaseSchedule:
    """Reads the enabled periodic tasks on every refresh; records each run's time in ``last_run_at``."""

    label = "database schedule"

    def __init__(self) -> None:
        self._invalid: set[tuple[str, str]] = set()

    def entries(self) -> Mapping[str, Entry]:
        from django.db import close_old_connections

        from amqptasks.contrib.django.models import PeriodicTask

        close_old_connections()  # beat is long-lived: never keep a connection the server has dropped
        entries = {}
        for row in PeriodicTask.objects.filter(enabled=True):
            try:
                entries[row.name] = entry_of(row)
            except ValueError as exc:
                key = (row.name, str(exc))
                if key not in self._invalid:  # once per problem, not every refresh
                    self._invalid.add(key)
                    log.warning("beat: database entry %r skipped: %s", row.name, exc)
        return entries

    def sent(self, name: str, scheduled: datetime) -> None:
        from amqptasks.contrib.django.models import PeriodicTask

        PeriodicTask.objects.filter(name=name).update(last_run_at=scheduled)
