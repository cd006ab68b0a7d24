"""``delay()`` and ``update_state()`` inside ``async def`` tasks never block the worker's event loop: a probe
coroutine on the same loop measures every stall while 50 async tasks each publish, in a real worker process."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from amqptasks.broker import BrokerURL
from amqptasks.results.exceptions import TaskError
from tests.worker_helpers import YAML, Project, get_all, wait_until, worker_process

TASKS = """
import asyncio, threading, time

PUBLISHED = []

@app.task(name="other.sink")
def sink(i):
    return i

@app.task(name="tasks.publisher", bind=True)
async def publisher(self, i):
    self.update_state(state="PROGRESS", meta={"i": i})
    sent = [sink.delay(i), sink.apply_async((i,), countdown=None)]
    PUBLISHED.append(i)
    await asyncio.sleep(0)
    return [each.id for each in sent]

@app.task(name="tasks.strands")
async def strands():
    sink.apply_async((1,), exchange="tasks", routing_key="nobody.binds.this")
    return "returned before the confirm"

def runqueue_wait():
    # Seconds this thread has spent runnable but not running (waiting for a CPU the OS gave to other processes):
    # on a shared 2-core machine that is not the loop's doing, and it is subtracted from what the probe blames
    # the loop for. Time blocked on a socket, or waiting for the GIL, is not in it: that still counts.
    with open(f"/proc/self/task/{threading.get_native_id()}/schedstat") as f:
        return int(f.read().split()[1]) / 1e9

@app.task(name="tasks.probe")
async def probe(expected):
    # Sleeps 5 ms at a time; whatever it waits beyond that, the loop was busy elsewhere (or blocked).
    record(probe="started")
    worst = worst_raw = 0.0
    turns, deadline, tail = 0, time.monotonic() + 60, None
    while time.monotonic() < deadline:
        before, queued = time.monotonic(), runqueue_wait()
        await asyncio.sleep(0.005)
        late = time.monotonic() - before - 0.005
        worst_raw, worst = max(worst_raw, late), max(worst, late - (runqueue_wait() - queued))
        turns += 1
        if tail is None and len(PUBLISHED) >= expected:
            tail = time.monotonic() + 1.0  # and a second more, while the confirms and results come back
        if tail is not None and time.monotonic() > tail:
            break
    record(probe="done", worst_ms=worst * 1000, worst_raw_ms=worst_raw * 1000, turns=turns, published=len(PUBLISHED))
    return worst * 1000
"""

COUNT = 50
#: The most the probe may wait beyond its 5 ms sleep.
MAX_STALL_MS = 50.0


@pytest.fixture
def project(tmp_path: Path, vhost: BrokerURL) -> Project:
    return Project.create(tmp_path, vhost, TASKS, YAML + "results: {backend: 'rpc://'}\n")


def test_async_tasks_that_publish_never_stall_the_loop(project: Project, channel: Any) -> None:
    # Given a worker running async tasks 60 at a time, and a probe coroutine on its loop
    app = project.app()
    with worker_process(project, "-Q", "work", "-c", str(COUNT + 10), "--processes", "1"):
        try:
            probe = app.send_task("tasks.probe", (COUNT,))
            wait_until(lambda: any(r.get("probe") == "started" for r in project.records()), 15, "the probe to start")
            # When 50 async tasks each report a state and publish two tasks
            states: dict[int, list[str]] = {}
            results = [app.send_task("tasks.publisher", (i,)) for i in range(COUNT)]
            sent = [
                r.get(timeout=30, on_message=lambda m, i=i: states.setdefault(i, []).append(m["status"]))
                for i, r in enumerate(results)
            ]
            worst_ms = probe.get(timeout=60)
        finally:
            app.close()
    [done] = [r for r in project.records() if r.get("probe") == "done"]
    print(f"probe: worst stall {worst_ms:.1f} ms ({done['worst_raw_ms']:.1f} ms with the time the OS kept the loop's "
          f"thread waiting for a CPU) over {done['turns']} turns")  # fmt: skip
    # Then every publish was confirmed (the sink tasks are in their queue) and every state arrived in order
    assert sorted(props.correlation_id for _, props, _ in get_all(channel, "other")) == sorted(
        i for pair in sent for i in pair
    )
    assert all(states[i] == ["PROGRESS", "SUCCESS"] for i in range(COUNT)), states
    # And the probe on the same loop never waited more than 50 ms for its turn (beyond what the OS kept it from a CPU)
    assert done["published"] == COUNT
    assert worst_ms < MAX_STALL_MS


def test_a_publish_that_fails_after_delay_returned_fails_the_async_task(project: Project) -> None:
    # Given an async task whose delay() returns at once, but the broker returns its message as unroutable
    app = project.app()
    with worker_process(project, "-Q", "work"):
        try:
            result = app.send_task("tasks.strands")
            # Then the task does not succeed: the failed publish is its failure, as if delay() had raised
            with pytest.raises(TaskError, match=r"UnroutableError: .* routing key 'nobody\.binds\.this' is unroutable"):
                result.get(timeout=15)
        finally:
            app.close()


def test_delay_in_a_coroutine_returns_without_waiting_and_aclose_waits_for_the_confirm(
    project: Project, channel: Any
) -> None:
    app = project.app()
    app.provision()

    async def main() -> tuple[str, float]:
        started = time.monotonic()
        sent = app.send_task("other.sink", (7,))
        returned_after = time.monotonic() - started
        await app.aclose()  # the publish was in flight on this loop: confirmed before this returns
        return sent.id, returned_after

    try:
        task_id, returned_after = asyncio.run(main())
    finally:
        app.close()
    assert [props.correlation_id for _, props, _ in get_all(channel, "other")] == [task_id]
    assert returned_after < 0.05


SCRIPT = """
import asyncio, sys
from tasks import app

async def main():
    print(app.send_task("other.sink", (8,)).id)  # no aclose(): asyncio.run ends right after

asyncio.run(main())
"""


def test_a_script_that_delays_in_asyncio_run_and_exits_still_sends_it(project: Project, channel: Any) -> None:
    # Given a script whose coroutine calls delay() and returns at once, ending its loop and then the interpreter
    (project.path / "script.py").write_text(SCRIPT, encoding="utf-8")
    with project.app() as app:
        app.provision()
    environment = {**os.environ, **project.env}
    done = subprocess.run([sys.executable, "script.py"], cwd=project.path, env=environment, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    # Then the message reached its queue before the process ended
    assert done.returncode == 0, done.stderr
    task_id = done.stdout.strip()
    assert [props.correlation_id for _, props, _ in get_all(channel, "other")] == [task_id], done.stderr
