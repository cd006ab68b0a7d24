"""Time limits and rate limits, as a worker enforces them on a real broker."""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from typing import Any

import pytest

from amqptasks.broker import BrokerURL
from amqptasks.errors import SoftTimeLimitExceeded
from tests.worker_helpers import get_all, make_app, ready, run_worker

pytestmark = pytest.mark.broker


def test_time_limits_stop_async_and_thread_tasks_and_dead_letter_them_once(
    vhost: BrokerURL, channel: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Given tasks over their limits: soft (async, and a thread in a Python loop) and hard (async, thread blocked in C)
    caplog.set_level(logging.INFO, logger="amqptasks")
    app = make_app(vhost)
    seen: list[str] = []

    @app.task(name="limits.async_soft", soft_time_limit=0.3)
    async def async_soft() -> None:
        seen.append("async_soft started")
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            seen.append("async_soft cancelled")
            raise

    @app.task(name="limits.thread_soft", soft_time_limit=0.3)
    def thread_soft() -> str:
        seen.append("thread_soft started")
        n = 0
        try:
            while True:  # pure Python: the soft limit is raised between two bytecodes
                n += 1
        except SoftTimeLimitExceeded:
            seen.append("thread_soft cleaned up")
            return "partial"

    @app.task(name="limits.async_hard", time_limit=0.3)
    async def async_hard() -> None:
        seen.append("async_hard started")
        await asyncio.sleep(10)

    @app.task(name="limits.thread_hard", time_limit=0.3)
    def thread_hard() -> None:
        seen.append("thread_hard started")
        time.sleep(1.5)  # blocked in C: nothing can interrupt it; the thread is abandoned

    ids = {
        "async_soft": async_soft.delay().id,
        "thread_soft": thread_soft.delay().id,
        "async_hard": async_hard.delay().id,
        "thread_hard": thread_hard.delay().id,
    }

    # When a burst worker drains the queue
    started = time.monotonic()
    run_worker(app, concurrency=4)
    elapsed = time.monotonic() - started
    app.close()

    # Then each ran once; the async soft limit cancelled its coroutine; the thread caught SoftTimeLimitExceeded
    assert sorted(seen) == sorted(["async_soft started", "async_soft cancelled", "thread_soft started",
                                   "thread_soft cleaned up", "async_hard started", "thread_hard started"])  # fmt: skip
    # And the three that did not return are in the DLQ, each once: no redelivery loop
    dead = sorted(props.correlation_id for _, props, _ in get_all(channel, "work.dlq"))
    assert dead == sorted([ids["async_soft"], ids["async_hard"], ids["thread_hard"]])
    assert ready(channel, "work") == 0
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("amqptasks")]
    assert any(f"limits.async_soft[{ids['async_soft']}] failed" in m and "SoftTimeLimitExceeded" in m for m in messages)
    assert any(f"limits.thread_hard[{ids['thread_hard']}] failed" in m and "TimeLimitExceeded" in m for m in messages)
    assert any(f"limits.thread_soft[{ids['thread_soft']}] succeeded" in m for m in messages)
    # And the worker did not wait for the blocked thread
    assert elapsed < 1.5 + 1.5


def test_time_limit_given_when_sending_applies_to_the_run_and_its_retries(vhost: BrokerURL) -> None:
    # Given a task with no limits of its own, sent with soft_time_limit=0.2; its first run fails and is retried
    app = make_app(vhost)
    outcomes: list[str] = []

    @app.task(name="limits.per_call", autoretry_for=(OSError,), default_retry_delay=0.05)
    def per_call() -> None:
        if not outcomes:
            outcomes.append("failed")
            raise OSError("first run fails")
        try:
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                pass
            outcomes.append("no limit")
        except SoftTimeLimitExceeded:
            outcomes.append("soft limit")

    per_call.apply_async(soft_time_limit=0.2)

    # When a worker runs it until the retry is over
    run_worker(app, until=lambda: len(outcomes) == 2)
    app.close()

    # Then the retry ran under the limit given when the task was sent
    assert outcomes == ["failed", "soft limit"]


def test_rate_limit_spaces_task_starts(vhost: BrokerURL) -> None:
    # Given 10 messages of a task limited to 5 per second
    app = make_app(vhost)
    starts: list[float] = []

    @app.task(name="api.call", rate_limit="5/s")
    def call(n: int) -> None:
        starts.append(time.monotonic())

    for n in range(10):
        call.delay(n)

    # When a worker with room for all of them at once drains the queue
    run_worker(app, until=lambda: len(starts) == 10, concurrency=10)
    app.close()

    # Then they started 0.2 s apart: 10 tasks take at least 1.8 s
    assert max(starts) - min(starts) >= 1.8 - 0.02
    gaps = [b - a for a, b in zip(sorted(starts), sorted(starts)[1:], strict=False)]
    # Thread start-up jitter under load can shorten one gap; the rate is what the limit promises.
    assert statistics.median(gaps) >= 0.2 - 0.02
