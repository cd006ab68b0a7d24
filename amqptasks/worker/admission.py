"""Before a task runs: the checks that may settle its message instead, and rejecting what cannot run.

A message that was running when its worker process died is charged (see :mod:`amqptasks.worker.journal`) and
dead-lettered as ``worker-lost`` once charged too often, an expired one dropped or
dead-lettered, an early one (before its eta) sent back through the delay tiers. Each check returns True
when it has settled the message: the worker then goes no further with it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from amqptasks.constants import REDELIVERIES_HEADER
from amqptasks.worker.journal import Crashes
from amqptasks.worker.republish import republish

if TYPE_CHECKING:
    from amqptasks.app import App
    from amqptasks.worker.consumer import WorkerSettings
    from amqptasks.worker.delivery import Delivery, Settle
    from amqptasks.worker.middleware import Hooks

log = logging.getLogger("amqptasks.worker")

#: Early by less than this, a message runs now rather than making another trip through the delay tiers.
ETA_TOLERANCE = 0.05
#: How long a redelivered message still running in a live process's journal waits for that process to be seen
#: dead (a connection merely cut: it stays alive, and the message runs again uncharged after this wait).
DYING_WAIT_S = 0.5
#: How long a charge waits for a supervisor to record how the dead worker process died.
HOW_WAIT_S = 0.3
#: An eta further ahead than this (ten years) is taken for a bad header (9999-12-31, a unit mix-up), not waited for.
MAX_ETA_AHEAD_S = 10 * 366 * 86400.0


class Admission:
    """The checks, with what they need of the worker: its app, settings and hooks, and how it settles."""

    def __init__(
        self, app: App, settings: WorkerSettings, hooks: Hooks, settle: Settle, flush: Callable[[], None]
    ) -> None:
        # A redelivered message is handled with no task running beside it (Worker._slots_for): a task crashing
        # the process between the counted copy's confirm and the original's ack would queue the crasher twice.
        self.app, self.settings, self.hooks, self.settle, self.flush = app, settings, hooks, settle, flush
        self.crashes = Crashes()

    async def charge_redelivery(self, d: Delivery) -> bool:
        """A redelivered message is charged one "killed its worker" attempt only if it was *running* when its
        worker process died (:mod:`amqptasks.worker.journal`); one that had not started, or whose connection was
        merely cut, runs again uncharged."""
        if not d.raw.redelivered or d.message is None:
            return False
        key = journal_key(d.message.id, d.message.extra_headers)
        found = self.crashes.claim(key)
        waited = 0.0
        while found is None and waited < DYING_WAIT_S and self.crashes.running_in_a_live_process(key):
            await asyncio.sleep(0.02)  # its process may be dying this very moment
            waited += 0.02
            found = self.crashes.claim(key)
        if found is not None:  # claimed at once: a duplicate of it arriving meanwhile is not charged as well
            note, path = found
            if note.how is None:  # its supervisor may be writing how it died: the charge is the better for it
                await asyncio.sleep(HOW_WAIT_S)
                note = self.crashes.how(path, note)
            await self.charge(d, str(note))
            self.crashes.done(key, path)
            return True
        delivered = (d.raw.headers or {}).get("x-delivery-count")
        if isinstance(delivered, int) and delivered > 0:
            # A quorum queue counts every redelivery, innocent ones too, up to its x-delivery-limit: a fresh
            # copy (its own count kept) starts the broker's count again, so innocents never reach the limit.
            charges = _charges(d)
            await republish(self.app, d, headers={REDELIVERIES_HEADER: charges} if charges else None)
            self.settle(d, "ack", "redelivered, not charged: sent again as a fresh copy")
            return True
        return False

    async def charge(self, d: Delivery, how: str) -> None:
        """*d*'s task killed its worker (*how* says which and how): a counted copy goes to the back of its queue,
        or, past ``max_redeliveries`` charges, the message goes to its DLQ as ``worker-lost``."""
        count, most = _charges(d) + 1, self.settings.max_redeliveries
        if count > most:
            detail = f"killed its worker {count} times (max_redeliveries {most}); last: {how}"
            await self.reject(d, "worker-lost", detail)
            return
        log.warning("%s killed its worker: %s; it runs again (run %d of at most %d)", d.label, how, count + 1, most + 1)
        await republish(self.app, d, headers={REDELIVERIES_HEADER: count})
        self.settle(d, "ack", f"worker lost: counted ({count}/{most})")
        # Sent now, not batched: were this process to die running the copy before the ack left, the original
        # would come back too, and the crasher would be in the queue twice.
        self.flush()

    async def expired(self, d: Delivery) -> bool:
        expires = d.message.expires if d.message else None
        if expires is None or expires > self.app.now():
            return False
        if self.settings.dead_letter_expired:
            await self.reject(d, "expired", f"expired at {expires.isoformat()}")
        else:
            log.info("%s expired at %s: dropped", d.label, expires.isoformat())
            self.settle(d, "ack", "expired")
            await self.hooks.run("after_skip", d, "EXPIRED", reverse=True)
        return True

    async def early(self, d: Delivery) -> bool:
        """A message before its eta (e.g. from a Celery client) goes back through the delay tiers."""
        eta = d.message.eta if d.message else None
        if eta is None:
            return False
        try:
            wait = (eta - self.app.now()).total_seconds()
        except OverflowError:  # an offset that takes it past year 9999
            wait = float("inf")
        if wait <= ETA_TOLERANCE:
            return False
        if wait > MAX_ETA_AHEAD_S:
            await self.reject(d, "bad-header", f"eta out of range: {eta.isoformat()} is more than ten years ahead")
            return True
        if not self.app.config.delays.enabled:
            log.warning("%s: its eta is %.1f s ahead, but without 'delays: {enabled: true}' it cannot wait: runs now",
                        d.label, wait)  # fmt: skip
            return False
        await republish(self.app, d)  # its eta kept: through the tiers until then (in rounds past ~49.7 days)
        log.info("%s: %.1f s before its eta: sent back through the delay tiers", d.label, wait)
        self.settle(d, "ack", "delayed until its eta")
        return True

    async def reject(self, d: Delivery, reason: str, detail: str) -> None:
        """Dead-letter a message that will not run (bad input, poison, expired), saying why."""
        # RabbitMQ records only "rejected" in x-death: the log line is where the why is kept.
        self.settle(d, "reject", detail)
        await self.hooks.run("after_reject", d, f"{reason}: {detail}", reverse=True)


def _charges(d: Delivery) -> int:
    """The "killed its worker" attempts already charged to *d* (carried by its counted copies)."""
    return _count((d.raw.headers or {}).get(REDELIVERIES_HEADER, 0))


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def journal_key(task_id: str, headers: Mapping[str, Any]) -> str:
    """What the journal calls a run: the task id, and its charge count once it has one. A stale copy of a crasher
    (an original whose ack was lost) is then not mistaken for the counted copy that crashed."""
    charges = headers.get(REDELIVERIES_HEADER)
    return task_id if charges is None else f"{task_id}~{_count(charges)}"
