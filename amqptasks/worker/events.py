"""The worker's built-in middleware: log lines for failures, retries and rejects, user signals, rate limits."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from amqptasks.dlq.records import FailureRecords
from amqptasks.errors import Retry
from amqptasks.tasks.einfo import ExceptionInfo
from amqptasks.tasks.options import parse_rate
from amqptasks.worker import tasklog
from amqptasks.worker.middleware import Middleware
from amqptasks.worker.tasklog import TaskProgress

if TYPE_CHECKING:
    from amqptasks.app import App
    from amqptasks.worker.delivery import Delivery

log = logging.getLogger("amqptasks.worker")


def _ms(delivery: Delivery) -> float:
    return (time.monotonic() - (delivery.started or delivery.received)) * 1000


class TaskLog(Middleware):
    """retried in Y s / failed / rejected to DLQ (received, started, succeeded: :mod:`amqptasks.worker.tasklog`)."""

    def after_retry(self, delivery: Delivery, exc: BaseException | None, countdown: float) -> None:
        log.warning("%s retried in %.1f s: %r", delivery.label, countdown, exc, extra={"task_event": "retried"})

    def after_failure(self, delivery: Delivery, exc: BaseException) -> None:
        log.error("%s failed in %.1f ms: %s: %s; dead-lettered", delivery.label, _ms(delivery),
                  type(exc).__name__, exc, extra={"task_event": "failed"})  # fmt: skip

    def after_reject(self, delivery: Delivery, reason: str) -> None:
        if delivery.settled == "requeue":
            log.info("%s requeued: %s", delivery.label, reason, extra={"task_event": "requeued"})
        else:
            log.warning("%s rejected to the DLQ: %s", delivery.label, reason, extra={"task_event": "rejected"})


class SignalHooks(Middleware):
    """Fires ``app.signals`` at the same points."""

    def __init__(self, app: App) -> None:
        self.signals = app.signals

    def after_receive(self, delivery: Delivery) -> None:
        self.signals.task_received.send(message=delivery.message, queue=delivery.queue)

    def before_execute(self, delivery: Delivery) -> None:
        self.signals.task_prerun.send(task=delivery.task, request=delivery.request)

    def after_success(self, delivery: Delivery, result: Any) -> None:
        self.signals.task_success.send(task=delivery.task, request=delivery.request, result=result)
        self.signals.task_postrun.send(task=delivery.task, request=delivery.request, state="SUCCESS")

    def after_failure(self, delivery: Delivery, exc: BaseException) -> None:
        self.signals.task_failure.send(task=delivery.task, request=delivery.request, exception=exc)
        self.signals.task_postrun.send(task=delivery.task, request=delivery.request, state="FAILURE")

    def after_retry(self, delivery: Delivery, exc: BaseException | None, countdown: float) -> None:
        self.signals.task_retry.send(task=delivery.task, request=delivery.request, reason=exc, countdown=countdown)

    def after_reject(self, delivery: Delivery, reason: str) -> None:
        self.signals.task_rejected.send(message=delivery.message, reason=reason, queue=delivery.queue)


class TaskHooks(Middleware):
    """A custom ``base=`` class's on_success / on_failure / on_retry / after_return, called as Celery calls them."""

    def after_success(self, delivery: Delivery, result: Any) -> None:
        task, request = delivery.task, delivery.request
        if task is not None and request is not None:
            task.on_success(result, request.id, request.args, request.kwargs)
            task.after_return("SUCCESS", result, request.id, request.args, request.kwargs, None)

    def after_failure(self, delivery: Delivery, exc: BaseException) -> None:
        task, request = delivery.task, delivery.request
        if task is not None and request is not None:
            einfo = ExceptionInfo(exc)
            task.on_failure(exc, request.id, request.args, request.kwargs, einfo)
            task.after_return("FAILURE", exc, request.id, request.args, request.kwargs, einfo)

    def after_retry(self, delivery: Delivery, exc: BaseException | None, countdown: float) -> None:
        task, request = delivery.task, delivery.request
        if task is not None and request is not None and exc is not None:
            # As in Celery: exc is the exception given to retry() (autoretry_for: the one caught), einfo describes
            # what the task raised (the Retry, whose traceback shows its cause).
            cause = exc.exc if isinstance(exc, Retry) else exc
            task.on_retry(cause, request.id, request.args, request.kwargs, ExceptionInfo(exc))


class RateLimits(Middleware):
    """Per-task rate limits ("10/s", "100/m", "1000/h"), per worker process: a task waits for its turn."""

    def __init__(self) -> None:
        self._next: dict[str, float] = {}
        self.overrides: dict[str, str | None] = {}  # set at run time by 'amqptasks control rate_limit'
        self._lock = asyncio.Lock()

    def before_execute(self, delivery: Delivery) -> Awaitable[None] | None:
        task = delivery.task
        rate = self.overrides.get(task.name, task.options.rate_limit) if task is not None else None
        if task is None or rate is None:
            return None  # no coroutine to create and await for the (usual) unlimited task
        return self._wait_turn(task.name, rate)

    async def _wait_turn(self, name: str, rate: str) -> None:
        interval = 1.0 / parse_rate(rate)
        async with self._lock:  # hand out start times one after another
            now = time.monotonic()
            start = max(now, self._next.get(name, now))
            self._next[name] = start + interval
        if start > now:
            await asyncio.sleep(start - now)


def builtin_middleware(app: App) -> list[Middleware]:
    from amqptasks.results.middleware import Results

    progress = [TaskProgress()] if tasklog.enabled() else []  # off by default: see amqptasks.worker.tasklog
    return [RateLimits(), *progress, TaskLog(), SignalHooks(app), TaskHooks(), FailureRecords(app), Results(app)]
