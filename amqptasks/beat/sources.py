"""Entries that can change while beat runs (e.g. a database table edited in an admin), beside the fixed ones.

A source is asked for its entries every :data:`REFRESH_INTERVAL` seconds by the leading beat; an entry that
appears starts at its next run time after the refresh, one that changes starts again from its new schedule,
one that goes away (or is disabled) stops. Run ids stay ``beat:<entry>:<scheduled time>``, so a change never
sends a scheduled time twice.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from amqptasks.beat.schedule import Entry

if TYPE_CHECKING:
    from amqptasks.app import App

#: How often the leader re-reads its sources (seconds): a change takes effect within this, plus one run.
REFRESH_INTERVAL = 2.0


class EntrySource(Protocol):
    """Where changing entries come from."""

    #: Shown in logs ("database schedule").
    label: str

    def entries(self) -> Mapping[str, Entry]:
        """The entries now (raise to keep the previous ones; beat logs the error and retries)."""
        ...

    def sent(self, name: str, scheduled: datetime) -> None:
        """Entry *name*'s run at *scheduled* was sent (to record its last run)."""
        ...


_SOURCES: weakref.WeakKeyDictionary[App, list[EntrySource]] = weakref.WeakKeyDictionary()


def add_source(app: App, source: EntrySource) -> None:
    """Let *app*'s beat read *source* live (next to the YAML's and code's fixed entries)."""
    _SOURCES.setdefault(app, []).append(source)


def sources_of(app: App) -> list[EntrySource]:
    return list(_SOURCES.get(app, ()))
