"""When and how a failed task runs again (pure): backoff and the retry decision."""

from __future__ import annotations

import random

from amqptasks.errors import Retry
from amqptasks.tasks.options import TaskOptions
from amqptasks.tasks.task import LimitedRetry


def countdown_for(options: TaskOptions, retries: int, explicit: float | None = None) -> float:
    """Seconds before retry number ``retries + 1``: explicit, else exponential backoff, else the fixed delay.

    Backoff as in Celery: ``factor * 2**retries`` capped at ``retry_backoff_max``; with jitter, a uniform
    draw between 0 and that (full jitter), so retrying workers do not stampede together.
    """
    if explicit is not None:
        return max(0.0, explicit)
    if options.retry_backoff:
        factor = 1.0 if options.retry_backoff is True else float(options.retry_backoff)
        delay = min(factor * (2**retries), options.retry_backoff_max)
        return random.uniform(0, delay) if options.retry_jitter else delay
    return options.default_retry_delay


def should_retry(options: TaskOptions, exc: BaseException, retries: int) -> bool:
    """A ``Retry`` or an exception listed in ``autoretry_for``, with retries left.

    ``self.retry(max_retries=N)`` overrides the task's limit, as in Celery.
    """
    wants = isinstance(exc, Retry) or (bool(options.autoretry_for) and isinstance(exc, options.autoretry_for))
    limit = exc.max_retries if isinstance(exc, LimitedRetry) else options.max_retries
    return wants and (limit is None or retries < limit)
