"""The beat loop: wait for the lock, then send each entry's runs as they fall due.

Guarantees, and the choices behind them:

* A scheduled time is sent at most once per leader: the loop only moves forward through each entry's run times.
* Across leaders, a new leader starts with the first run time *after* it took the lock. The old leader only sent
  runs whose time had come before it died, so no run is sent twice. The price: a run that fell due while no beat
  held the lock (between the crash and the takeover, about a second) is skipped, not back-filled; back-filling
  could repeat a run the old leader sent just before dying. Runs are at-most-once; the deterministic task id
  ``beat:<entry>:<time>`` lets consumers detect the rare duplicate anyway (e.g. clock skew between hosts).
* A leader that falls behind (a paused process, a slow publish) sends a late run only while it is less than one
  interval late (at most 60 s); older runs are skipped with a warning.
* Losing the lock connection stops sending at once; the process goes back to standby and retries.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from amqptasks import errors
from amqptasks.beat.lock import BeatLock
from amqptasks.beat.schedule import Entry, entries_of, task_id
from amqptasks.beat.sources import REFRESH_INTERVAL, EntrySource, sources_of

if TYPE_CHECKING:
    from amqptasks.app import App

log = logging.getLogger("amqptasks.beat")

#: Standbys retry the lock this often (seconds).
RETRY_INTERVAL = 1.0
#: Longest wait between two looks at the schedule while leading (keeps heartbeats and stop() responsive).
MAX_SLEEP = 0.5
#: A run later than this is never sent, whatever the interval.
MAX_LATENESS = timedelta(seconds=60)


def _now() -> datetime:
    return datetime.now(UTC)


class Scheduler:
    """``Scheduler(app).run()`` blocks until :meth:`stop`; only the leader of the vhost sends tasks."""

    def __init__(
        self,
        app: App,
        entries: Mapping[str, Entry] | None = None,
        *,
        clock: Callable[[], datetime] = _now,
        name: str = "amqptasks beat",
    ) -> None:
        self.app = app
        self._fixed = dict(entries_of(app) if entries is None else entries)
        #: Sources of entries that change while beat runs (the Django admin's table), read by the leader.
        self._sources: list[EntrySource] = sources_of(app) if entries is None else []
        self._source_of: dict[str, EntrySource] = {}
        self._refresh_failed: set[str] = set()
        self.entries = dict(self._fixed)
        self._read_sources()
        self._clock = clock
        self._stop = threading.Event()
        self._lock = BeatLock(app.config.broker, name=name)
        #: Scheduled times sent by this process, per entry (most recent last), for logs and tests.
        self.sent: dict[str, list[datetime]] = {name: [] for name in self.entries}

    def next_runs(self, now: datetime | None = None) -> dict[str, datetime]:
        moment = now or self._clock()
        return {name: entry.next_after(moment) for name, entry in self.entries.items()}

    def stop(self) -> None:
        """Ask the loop to end (thread- and signal-safe); the lock is released on the way out."""
        self._stop.set()

    @property
    def is_leader(self) -> bool:
        return self._lock.held

    def run(self) -> None:
        standby_logged = False
        try:
            while not self._stop.is_set():
                try:
                    acquired = self._lock.try_acquire()
                except errors.BrokerError as exc:
                    log.warning("beat: %s; retrying", exc)
                    acquired = False
                if not acquired:
                    if not standby_logged:
                        log.info("beat: standby (another beat holds the lock); retrying every %g s", RETRY_INTERVAL)
                        standby_logged = True
                    self._stop.wait(RETRY_INTERVAL)
                    continue
                standby_logged = False
                try:
                    self._lead()
                except errors.BrokerError as exc:
                    log.warning("beat: lost the lock (%s); back to standby", exc)
        finally:
            self._lock.release()
            log.info("beat: stopped")

    def _lead(self) -> None:
        start = self._clock()
        self._read_sources()
        due = self.next_runs(start)
        log.info("beat: leader; %d entr%s", len(due), "y" if len(due) == 1 else "ies")
        refreshed = start
        while not self._stop.is_set():
            now = self._clock()
            if self._sources and (now - refreshed).total_seconds() >= REFRESH_INTERVAL:
                self._apply_changes(due, now)
                refreshed = now
            self.fire_due(due, now)
            wait = min((d - self._clock() for d in due.values()), default=timedelta(seconds=MAX_SLEEP))
            self._lock.wait(min(MAX_SLEEP, max(0.0, wait.total_seconds())))

    def fire_due(self, due: dict[str, datetime], now: datetime) -> None:
        """One step of the leader's loop: send each run of *due* (entry -> scheduled time) that has come by *now*,
        moving the entry to its next run. ``amqptasks.testing.tick_beat`` drives it with a virtual clock."""
        for name, entry in self.entries.items():
            if due[name] <= now:
                due[name] = self._fire(entry, due[name], now)

    def _read_sources(self) -> None:
        """``self.entries`` = the fixed entries plus what each source holds now (a failing source keeps its last)."""
        if not self._sources:
            return
        entries = dict(self._fixed)
        source_of: dict[str, EntrySource] = {}
        for source in self._sources:
            try:
                found = dict(source.entries())
            except Exception as exc:  # a database that is down must not stop the fixed entries
                if source.label not in self._refresh_failed:
                    log.warning("beat: cannot read the %s (%s); keeping its last entries", source.label, exc)
                    self._refresh_failed.add(source.label)
                found = {n: e for n, e in self.entries.items() if self._source_of.get(n) is source}
            else:
                if source.label in self._refresh_failed:
                    log.info("beat: the %s can be read again", source.label)
                    self._refresh_failed.discard(source.label)
            for name, entry in found.items():
                if name in entries:
                    log.warning("beat: %s entry %r has the name of another entry; ignored", source.label, name)
                    continue
                entries[name] = entry
                source_of[name] = source
        self.entries, self._source_of = entries, source_of

    def _apply_changes(self, due: dict[str, datetime], now: datetime) -> None:
        """Re-read the sources: new and changed entries start from their next run after *now*; removed ones stop."""
        before = self.entries
        self._read_sources()
        for name in set(before) - set(self.entries):
            due.pop(name, None)
            log.info("beat: entry %s removed", name)
        for name, entry in self.entries.items():
            if before.get(name) != entry:
                due[name] = entry.next_after(now)
                log.info("beat: entry %s %s: %s", name, "changed" if name in before else "added", entry.describe())

    def _fire(self, entry: Entry, scheduled: datetime, now: datetime) -> datetime:
        """Send the run at *scheduled* unless too late; returns the entry's next run time."""
        following = entry.next_after(scheduled)
        late_limit = min(following - scheduled, MAX_LATENESS)
        if now - scheduled > late_limit:
            log.warning("beat: %s: skipped the run of %s (%s late)", entry.name, scheduled.isoformat(), now - scheduled)
        else:
            self._send(entry, scheduled)
        return following if following > now else entry.next_after(now)

    def _send(self, entry: Entry, scheduled: datetime) -> None:
        tid = task_id(entry.name, scheduled)
        try:
            self.app.send_task(entry.task, entry.args, entry.kwargs, task_id=tid, **entry.options)
        except errors.BrokerError as exc:
            log.error("beat: %s: sending %s failed: %s", entry.name, tid, exc)
            return
        self.sent.setdefault(entry.name, []).append(scheduled)
        log.info("beat: sent %s (%s)", tid, entry.task)
        source = self._source_of.get(entry.name)
        if source is not None:
            try:
                source.sent(entry.name, scheduled)
            except Exception as exc:
                log.warning("beat: %s: recording the run in the %s failed: %s", entry.name, source.label, exc)


def start_thread(app: App) -> tuple[Scheduler, threading.Thread]:
    """A scheduler running in a daemon thread (``amqptasks worker --beat``)."""
    scheduler = Scheduler(app, name="amqptasks worker beat")
    thread = threading.Thread(target=scheduler.run, name="amqptasks-beat", daemon=True)
    thread.start()
    return scheduler, thread


def banner(scheduler: Scheduler) -> str:
    lines = [f"amqptasks beat: {len(scheduler.entries)} entr{'y' if len(scheduler.entries) == 1 else 'ies'}"]
    for name, when in sorted(scheduler.next_runs().items(), key=lambda item: item[1]):
        entry = scheduler.entries[name]
        lines.append(f"  {name}: {entry.task}, {entry.describe()}; next {when.isoformat(timespec='seconds')}")
    if not scheduler.entries:
        lines.append("  (no entries: add beat.entries to the YAML, or amqptasks.beat.periodic() in code)")
    return "\n".join(lines)
