"""Before a task runs: the checks that may settle its message instead, and rejecting what cannot run.

A message redelivered too often (it may kill its worker) is dead-lettered, an expired one dropped or
dead-lettered, an early one (before its eta) sent back through the delay tiers. Each check returns True
when it has settled the message: the worker then goes no further with it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from amqptasks.constants import REDELIVERIES_HEADER
from amqptasks.worker.republish import republish

if TYPE_CHECKING:
    from amqptasks.app import App
    from amqptasks.worker.consumer import WorkerSettings
    from amqptasks.worker.delivery import Delivery, Settle
    from amqptasks.worker.middleware import Hooks

log = logging.getLogger("amqptasks.worker")

#: Early by less than this, a message runs now rather than making another trip through the delay tiers.
ETA_TOLERANCE = 0.05
#: An eta further ahead than this (ten years) is taken for a bad header (9999-12-31, a unit mix-up), not waited for.
MAX_ETA_AHEAD_S = 10 * 366 * 86400.0


class Admission:
    """The checks, with what they need of the worker: its app, settings and hooks, and how it settles."""

    def __init__(self, app: App, settings: WorkerSettings, hooks: Hooks, settle: Settle) -> None:
        self.app, self.settings, self.hooks, self.settle = app, settings, hooks, settle

    async def redelivered_too_often(self, d: Delivery) -> bool:
        raw, headers = d.raw, d.raw.headers or {}
        if not raw.redelivered:
            return False
        if "x-delivery-count" in headers:
            return await self._over_quorum_default(d, headers["x-delivery-count"])
        previous = headers.get(REDELIVERIES_HEADER, 0)
        count = (previous if isinstance(previous, int) else 0) + 1
        if count > self.settings.max_redeliveries:
            await self.reject(d, "poison", f"redelivered {count} times (it may kill its worker)")
            return True
        await republish(self.app, d, headers={REDELIVERIES_HEADER: count})  # counted copy to the back of the queue
        self.settle(d, "ack", f"redelivered: counted ({count}/{self.settings.max_redeliveries})")
        return True

    async def _over_quorum_default(self, d: Delivery, count: object) -> bool:
        """A quorum queue counts redeliveries itself (x-delivery-count) and enforces its own delivery_limit. Without
        one, RabbitMQ 3.x redelivers forever and 4.0+ stops at its default of 20, dropping the message when the
        queue has no dead-letter exchange: the worker dead-letters it after max_redeliveries instead, saying why."""
        queue = next((q for q in self.app.config.topology.queues if q.name == d.queue), None)
        if queue is None or queue.type != "quorum" or queue.delivery_limit is not None or not isinstance(count, int):
            return False
        if count <= self.settings.max_redeliveries:
            return False
        await self.reject(d, "poison", f"redelivered {count} times (it may kill its worker)")
        return True

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
