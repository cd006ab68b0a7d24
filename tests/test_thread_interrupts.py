"""Soft time limits in the thread pool, delivered race-free: thousands of short tasks whose limit expires around
the moment they end, in a real worker process. No pool thread is lost, and no task is interrupted that was not
over its own limit."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import pytest

from amqptasks.broker import BrokerURL
from amqptasks.errors import SoftTimeLimitExceeded, Terminated
from amqptasks.result import AsyncResult
from amqptasks.tasks.signature import Signature
from amqptasks.worker.threads import Run, TaskThreads
from tests.worker_helpers import YAML, Project, wait_until, worker_process

TASKS = """
import threading, time
from amqptasks.errors import SoftTimeLimitExceeded
from tests_record import record

def spin(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:  # pure Python: the soft limit lands at the next bytecode
        pass

@app.task(name="tasks.limited")
def limited(seconds):
    spin(seconds)

@app.task(name="tasks.plain")
def plain(seconds):
    spin(seconds)

@app.task(name="tasks.twin_limited")
def twin_limited():
    record(kind="limited", outcome="started")
    try:
        spin(3)
    except SoftTimeLimitExceeded:
        record(kind="limited", outcome="soft")
        return
    record(kind="limited", outcome="done")

@app.task(name="tasks.twin_plain")
def twin_plain():
    record(kind="plain", outcome="started")
    try:
        spin(3)
    except BaseException as exc:
        record(kind="plain", outcome=type(exc).__name__)
        raise
    record(kind="plain", outcome="done")

@app.task(name="tasks.threads")
def threads():
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("amqptasks-task"))
"""

#: Tasks of each kind. Limited ones spin 1-15 ms under a 3 ms soft limit (the loop sees it late: a spinning thread
#: holds the GIL up to 5 ms at a time); plain ones (no limit) share their threads.
EACH = 1000
THREADS = 4


@pytest.fixture
def project(tmp_path: Path, vhost: BrokerURL, redis_url: str) -> Project:
    return Project.create(tmp_path, vhost, TASKS, YAML + f"results: {{backend: '{redis_url}'}}\n")


@pytest.mark.timeout(240)
def test_soft_limits_expiring_as_tasks_end_never_kill_a_thread_nor_hit_another_task(project: Project) -> None:
    rng = random.Random(11)
    signatures: list[Signature] = []
    for _ in range(EACH):
        signatures.append(Signature("tasks.limited", (rng.uniform(0.001, 0.015),), {}, {"soft_time_limit": 0.003}))
        signatures.append(Signature("tasks.plain", (rng.uniform(0.0005, 0.003),), {}))
    app = project.app()
    backend = app.result_backend
    assert backend is not None
    with worker_process(project, "-Q", "work", "-c", str(THREADS), "--processes", "1") as worker:
        try:
            # Given a worker with 4 pool threads, when 2,000 short tasks run, half of them under a soft limit
            # that expires around the moment they end
            ids = [r.id for r in app.publish_many(signatures)]
            wait_until(lambda: backend.peek(ids[-1]) is not None and backend.peek(ids[-2]) is not None, 180,
                       f"the last tasks to finish ({worker.output[-2000:]})")  # fmt: skip
            alive = app.send_task("tasks.threads").get(timeout=30)
            states = [_outcome(AsyncResult(task_id, app=app).get(timeout=30, propagate=False)) for task_id in ids]
        finally:
            app.close()
        log = worker.output
    # Then every task has its final state; no task without a limit was interrupted
    limited, plain = states[0::2], states[1::2]
    assert set(plain) == {"SUCCESS"}, {s: plain.count(s) for s in set(plain)}
    assert set(limited) <= {"SUCCESS", "SoftTimeLimitExceeded"}, {s: limited.count(s) for s in set(limited)}
    soft = limited.count("SoftTimeLimitExceeded")
    print(f"limited tasks: {soft} interrupted by their soft limit, {EACH - soft} finished first")
    assert 0 < soft < EACH  # the limit really expired around the tasks' end, both ways
    # And no pool thread was lost: all 4 are alive, and nothing escaped into the worker's log
    assert len(alive) == THREADS, alive
    assert "Traceback" not in log and "Exception in thread" not in log, log[-3000:]


def _outcome(value: object) -> str:
    return type(value).__name__ if isinstance(value, BaseException) else "SUCCESS"


def test_a_soft_limit_interrupts_its_own_run_not_another_message_with_the_same_task_id(project: Project) -> None:
    # Given two messages with one task id running side by side (a duplicate after a publisher reconnect, or a
    # reused task_id): one with a 1.5 s soft limit, the other without, started after it
    app = project.app()
    with worker_process(project, "-Q", "work", "-c", "2", "--processes", "1"):
        try:
            app.send_task("tasks.twin_limited", task_id="twin", soft_time_limit=1.5)
            wait_until(lambda: len(project.records()) == 1, 5, "the limited one to start")
            app.send_task("tasks.twin_plain", task_id="twin")  # starts while the first still runs
            wait_until(lambda: sum(r["outcome"] != "started" for r in project.records()) >= 2, 20, "both to end")
        finally:
            app.close()
    # Then the limit stopped the run it belongs to; the other ran to its end
    outcomes = {r["kind"]: r["outcome"] for r in project.records() if r["outcome"] != "started"}
    assert outcomes == {"limited": "soft", "plain": "done"}


# --- the delivery rule itself (pure logic: a pool and its runs, in this process) ------------------------------


def _spin_checked(seconds: float) -> str:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return "finished"


def test_an_interrupt_reaches_only_its_own_run_while_it_is_inside_its_function() -> None:
    async def main() -> list[Any]:
        pool = TaskThreads(1)
        loop = asyncio.get_running_loop()
        try:
            # Given a run that finished on the pool's only thread
            first = Run()
            assert await pool.submit(loop, lambda: "first", first) == "first"
            # When its interrupt comes late, while the next run spins on the same thread
            second = Run()
            running = pool.submit(loop, lambda: _spin_checked(0.2), second)
            late = first.interrupt(SoftTimeLimitExceeded)
            # Then nothing is sent: the next run finishes untouched
            assert await running == "finished"
            # And an interrupt of a run inside its function lands there, once
            third = Run()
            busy = pool.submit(loop, lambda: _spin_checked(5), third)
            while not third.interrupt(SoftTimeLimitExceeded):
                await asyncio.sleep(0.001)
            outcome = await asyncio.gather(busy, return_exceptions=True)
            again = third.interrupt(SoftTimeLimitExceeded)
            # And the thread lives on
            alive = await pool.submit(loop, lambda: "alive")
            return [late, outcome, again, alive, Run().interrupt(Terminated)]
        finally:
            pool.shutdown(wait=True)

    late, [outcome], again, alive, unstarted = asyncio.run(main())
    assert late is False and again is False and unstarted is False
    assert isinstance(outcome, SoftTimeLimitExceeded) and str(outcome) == "soft time limit exceeded"
    assert alive == "alive"
