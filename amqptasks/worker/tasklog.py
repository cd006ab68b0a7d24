"""Per-task progress lines (received, started, succeeded), off by default: ``amqptasks worker --log-tasks``.

They go to their own logger, :data:`TASKS_LOGGER`. At the worker's default level its level is WARNING, so the
lines are not even built: the worker leaves this middleware out when the logger is not enabled for INFO
(decided once, when the worker starts). Three lines per task cost a worker about half its throughput on
no-op tasks (formatting, the lock around the stream, a write each), which is why they are opt-in, as in
Celery, whose worker logs at WARNING by default. Failures, retries and dead-letters are logged whatever
this says (:class:`amqptasks.worker.events.TaskLog`).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from amqptasks.worker.middleware import Middleware

if TYPE_CHECKING:
    from amqptasks.worker.delivery import Delivery

#: The logger of the per-task progress lines.
TASKS_LOGGER = "amqptasks.worker.tasks"

log = logging.getLogger(TASKS_LOGGER)


def enabled() -> bool:
    """Whether the progress lines would be written now (the worker asks once, at start)."""
    return log.isEnabledFor(logging.INFO)


class TaskProgress(Middleware):
    """received / started / succeeded in X ms, at INFO on :data:`TASKS_LOGGER`."""

    def after_receive(self, delivery: Delivery) -> None:
        log.info("%s received", delivery.label, extra={"task_event": "received"})

    def before_execute(self, delivery: Delivery) -> None:
        log.info("%s started", delivery.label, extra={"task_event": "started"})

    def after_success(self, delivery: Delivery, result: Any) -> None:
        ms = (time.monotonic() - (delivery.started or delivery.received)) * 1000
        log.info("%s succeeded in %.1f ms", delivery.label, ms, extra={"task_event": "succeeded"})
