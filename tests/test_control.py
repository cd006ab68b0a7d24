"""Broadcast control against a real broker: inspect ping/registered/active/stats, rate_limit, revoke."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from amqptasks import App, control
from amqptasks.broker import BrokerURL
from amqptasks.control import stored
from amqptasks.control.client import broadcast
from amqptasks.control.revoked import RevokedIds
from amqptasks.errors import TaskRevoked, Terminated
from amqptasks.worker.consumer import Worker, WorkerSettings
from tests.cli_helpers import run
from tests.worker_helpers import YAML, make_app, ready, wait_until

YAML_RPC = YAML + "results: {backend: 'rpc://'}\n"


@contextmanager
def running_worker(
    app: App, queues: tuple[str, ...] = ("work",), *, revoked_ttl: float | None = None, **settings: Any
) -> Iterator[Worker]:
    """A worker consuming in a background thread (its own event loop), until the block ends."""
    worker = Worker(app, WorkerSettings(queues=list(queues), **settings))
    if revoked_ttl is not None:
        worker.control.revoked.ttl = revoked_ttl
    loops: list[asyncio.AbstractEventLoop] = []
    failures: list[BaseException] = []
    up = threading.Event()

    async def main() -> None:
        loops.append(asyncio.get_running_loop())
        running = asyncio.ensure_future(worker.run())
        while not running.done() and worker.control._channel is None:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # the control consumer is registered right after its channel opens
        up.set()
        try:
            await running
        finally:
            await app.aclose()

    def thread_main() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:
            failures.append(exc)
        finally:
            up.set()

    thread = threading.Thread(target=thread_main, daemon=True)
    thread.start()
    assert up.wait(15), "the worker did not start"
    try:
        yield worker
    finally:
        if loops:
            loops[0].call_soon_threadsafe(worker.stop)
        thread.join(15)
        assert not thread.is_alive(), "the worker did not stop"
        app.close()
    if failures:
        raise failures[0]


def project_yaml(tmp_path: Path) -> str:
    (tmp_path / "app.yaml").write_text(YAML)
    return str(tmp_path / "app.yaml")


# --- pure ---------------------------------------------------------------------------------------------------


def test_revoked_ids_are_bounded_and_expire() -> None:
    ids = RevokedIds(maximum=3, ttl=0.2)
    for n in range(5):
        ids.add(str(n))
    assert [str(n) in ids for n in range(5)] == [False, False, True, True, True]
    time.sleep(0.25)
    assert "4" not in ids and len(ids) == 0


# --- against the broker -------------------------------------------------------------------------------------


def test_inspect_ping_and_registered_answer_while_the_worker_runs_and_not_after(
    vhost: BrokerURL, tmp_path: Path
) -> None:
    # Given a running worker with two tasks
    app = make_app(vhost)

    @app.task(name="m.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="m.mul")
    async def mul(x: int, y: int) -> int:
        return x * y

    config, env = project_yaml(tmp_path), {"AMQPTASKS_BROKER_URL": vhost.to_url()}
    with running_worker(app, hostname="w1@test"):
        # When the CLI pings and asks what is registered
        ping = run(["inspect", "ping", config, "--timeout", "0.5"], cwd=tmp_path, env=env)
        registered = run(["inspect", "registered", config, "--timeout", "0.5", "--json"], cwd=tmp_path, env=env)
        stats = broadcast(app.config, "stats", timeout=0.5)
    # Then the worker answered each within the timeout
    assert ping.code == 0 and ping.stdout.strip() == "w1@test: pong", ping
    assert registered.code == 0, registered
    [reply] = registered.json()
    assert reply["hostname"] == "w1@test" and {"m.add", "m.mul"} <= set(reply["ok"])
    assert stats[0]["ok"]["concurrency"] == 8 and stats[0]["ok"]["queues"] == ["work"]
    # And once it stopped, nobody answers
    after = run(["inspect", "ping", config, "--timeout", "0.3"], cwd=tmp_path, env=env)
    assert after.code == 1 and "no worker replied" in after.stderr, after


def test_active_lists_a_running_async_task_and_terminate_cancels_it(vhost: BrokerURL, channel: Any) -> None:
    # Given a slow async task running in a worker
    app = make_app(vhost)
    events: list[str] = []

    @app.task(name="m.slow")
    async def slow(seconds: float) -> None:
        events.append("started")
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            events.append("cancelled")
            raise
        events.append("finished")

    with running_worker(app) as worker:
        result = slow.delay(30)
        wait_until(lambda: events == ["started"], what="the task to start")
        # When asked what runs, then told to revoke it with terminate
        [active] = broadcast(app.config, "active", timeout=0.5)
        replies = control.revoke(app, result.id, terminate=True, timeout=0.5)
        wait_until(lambda: "cancelled" in events, what="the task to be cancelled")
        wait_until(lambda: not worker.active, what="the worker to let go of it")
    # Then active showed it, and it was cancelled, never finished, and its message acknowledged (not dead-lettered)
    assert [(a["id"], a["name"], a["args"]) for a in active["ok"]] == [(result.id, "m.slow", [30])]
    assert replies[0]["ok"] == "terminated"
    assert events == ["started", "cancelled"]
    assert ready(channel, "work") == 0 and ready(channel, "work.dlq") == 0


def test_terminate_stops_a_sync_task_in_a_thread_and_its_state_is_revoked(vhost: BrokerURL, channel: Any) -> None:
    # Given a sync task busy in Python code in the thread pool, with the rpc result backend
    app = make_app(vhost, YAML_RPC)
    events: list[str] = []

    @app.task(name="m.busy")
    def busy(seconds: float) -> None:
        events.append("started")
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                pass
        except Terminated:
            events.append("terminated")
            raise
        events.append("finished")

    with running_worker(app) as worker:
        result = busy.delay(30)
        wait_until(lambda: events == ["started"], what="the task to start")
        # When it is revoked with terminate
        replies = control.revoke(app, result.id, terminate=True, timeout=0.5)
        wait_until(lambda: "terminated" in events, what="the thread to be interrupted")
        wait_until(lambda: not worker.active, what="the worker to let go of it")
        # Then the caller sees REVOKED, it never finished, and its message is acknowledged (not dead-lettered)
        with pytest.raises(TaskRevoked):
            result.get(timeout=5)
    assert replies[0]["ok"] == "terminated"
    assert events == ["started", "terminated"]
    assert ready(channel, "work") == 0 and ready(channel, "work.dlq") == 0


def test_terminate_kills_the_child_process_running_a_task(vhost: BrokerURL, channel: Any, tmp_path: Path) -> None:
    # Given a task sleeping in a processes-pool child (a sleep: no Python bytecode runs while it waits)
    app = make_app(vhost)
    marker = tmp_path / "started"

    @app.task(name="m.sleepy")
    def sleepy(path: str, seconds: float) -> None:
        Path(path).write_text(str(os.getpid()))
        time.sleep(seconds)
        Path(path).write_text("finished")

    with running_worker(app, pool="processes", concurrency=1) as worker:
        result = sleepy.delay(str(marker), 30)
        wait_until(marker.exists, what="the task to start in a child")
        child = int(marker.read_text())
        # When it is revoked with terminate
        replies = control.revoke(app, result.id, terminate=True, timeout=0.5)
        wait_until(lambda: not worker.active, what="the worker to let go of it")
        # Then its child is gone, a fresh one replaced it, and the next task runs there
        wait_until(lambda: not _alive(child), what="the child to be killed")
        assert worker.executor.processes is not None and child not in worker.executor.processes.pids
        sleepy.delay(str(tmp_path / "next"), 0)
        wait_until(lambda: (tmp_path / "next").exists() and (tmp_path / "next").read_text() == "finished",
                   what="the next task")  # fmt: skip
    assert replies[0]["ok"] == "terminated"
    assert marker.read_text() == str(child)  # never finished
    assert ready(channel, "work") == 0 and ready(channel, "work.dlq") == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is dead too
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def recording_task(app: App, name: str) -> tuple[Any, list[int]]:
    """A task on *app* that records the numbers it ran with, and the list it records them in."""
    ran: list[int] = []

    @app.task(name=name)
    def record(n: int) -> None:
        ran.append(n)

    return record, ran


def revoked_arrives_then_another_runs(caplog: pytest.LogCaptureFixture, task: Any, ran: list[int]) -> None:
    """Wait until the worker acknowledged a revoked task, then check that another call of *task* still runs."""
    wait_until(lambda: "revoked: acknowledged" in caplog.text, timeout=10, what="the revoked task to arrive")
    task.delay(2)
    wait_until(lambda: ran == [2], what="the other task")


def test_revoked_countdown_task_never_runs_and_is_logged_as_revoked(
    vhost: BrokerURL, channel: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a task sent with a 2 s countdown and a running worker
    app = make_app(vhost)
    later, ran = recording_task(app, "m.later")

    caplog.set_level(logging.INFO, logger="amqptasks.worker")
    with running_worker(app):
        result = later.apply_async((1,), countdown=2)
        # When it is revoked while it waits in the delay tiers
        replies = result.revoke(timeout=0.5)
        # Then it arrives, is acknowledged without running, and the log says so; another task still runs
        revoked_arrives_then_another_runs(caplog, later, ran)
    assert replies[0]["ok"] == "revoked"
    assert f"m.later[{result.id}] revoked" in caplog.text
    assert ready(channel, "work") == 0 and ready(channel, "work.dlq") == 0


def test_control_rate_limit_changes_a_task_rate_in_the_running_worker(vhost: BrokerURL, tmp_path: Path) -> None:
    # Given a task without a rate limit in a running worker
    app = make_app(vhost)
    starts: list[float] = []

    @app.task(name="m.api")
    def api() -> None:
        starts.append(time.monotonic())

    config, env = project_yaml(tmp_path), {"AMQPTASKS_BROKER_URL": vhost.to_url()}
    with running_worker(app, concurrency=4):
        # When the CLI sets it to 5 per second, then 4 are sent at once
        changed = run(["control", "rate_limit", "m.api", "5/s", config, "--timeout", "0.5"], cwd=tmp_path, env=env)
        bad = broadcast(app.config, "rate_limit", {"task_name": "m.api", "rate_limit": "fast"}, timeout=0.5)
        for _ in range(4):
            api.delay()
        wait_until(lambda: len(starts) == 4, what="4 tasks")
    # Then their starts are spaced 0.2 s apart, and a bad rate is refused with a reason
    assert changed.code == 0 and "rate limit of m.api set to 5/s" in changed.stdout, changed
    assert starts[-1] - starts[0] >= 0.55
    assert "must look like" in bad[0]["error"]


# --- revocations stored on the broker: workers started after the revoke ------------------------------------


def test_task_revoked_while_no_worker_runs_is_not_run_by_a_worker_started_afterwards(
    vhost: BrokerURL, channel: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Given two tasks waiting in their queue, with the rpc result backend, and no worker running
    app = make_app(vhost, YAML_RPC)
    job, ran = recording_task(app, "m.job")

    revoked, kept = job.delay(1), job.delay(2)
    wait_until(lambda: ready(channel, "work") == 2, what="both tasks in the queue")
    # When the first is revoked (no worker answers), then a worker starts
    replies = revoked.revoke(timeout=0.3)
    caplog.set_level(logging.INFO, logger="amqptasks.worker")
    with running_worker(app):
        wait_until(lambda: ran == [2], what="the other task")
        wait_until(lambda: "revoked: acknowledged" in caplog.text, what="the revoked task to be acknowledged")
        # Then the caller sees REVOKED, the other task ran, and both messages are acknowledged (not dead-lettered)
        with pytest.raises(TaskRevoked):
            revoked.get(timeout=5)
        kept.get(timeout=5)
    assert replies == []
    assert ran == [2]
    assert f"m.job[{revoked.id}] revoked: acknowledged, not run" in caplog.text
    assert ready(channel, "work") == 0 and ready(channel, "work.dlq") == 0


def test_countdown_task_revoked_before_a_worker_starts_never_runs_when_due(
    vhost: BrokerURL, channel: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a task sent with a 2 s countdown, revoked while no worker runs
    app = make_app(vhost)
    later, ran = recording_task(app, "m.later")

    result = later.apply_async((1,), countdown=2)
    result.revoke(timeout=0.2)
    caplog.set_level(logging.INFO, logger="amqptasks.worker")
    # When a worker starts afterwards and the task falls due (another task still runs)
    with running_worker(app):
        revoked_arrives_then_another_runs(caplog, later, ran)
    # Then it was acknowledged without running
    assert ran == [2]
    assert f"m.later[{result.id}] revoked: acknowledged, not run" in caplog.text
    assert ready(channel, "work") == 0 and ready(channel, "work.dlq") == 0


def test_cli_revoke_with_no_worker_running_says_it_is_stored_and_succeeds(
    vhost: BrokerURL, channel: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a queued task and no worker running
    app = make_app(vhost)
    job, ran = recording_task(app, "m.job")
    result = job.delay(1)

    # When the CLI revokes it, Then it succeeds, saying the revocation is stored
    config, env = project_yaml(tmp_path), {"AMQPTASKS_BROKER_URL": vhost.to_url()}
    revoked = run(["control", "revoke", result.id, config, "--timeout", "0.3"], cwd=tmp_path, env=env)
    assert revoked.code == 0, revoked
    assert f"no worker replied: the revocation of {result.id} is stored" in revoked.stderr

    # And a worker started afterwards does not run it
    caplog.set_level(logging.INFO, logger="amqptasks.worker")
    with running_worker(app):
        revoked_arrives_then_another_runs(caplog, job, ran)
    assert ran == [2]


def test_stored_revocations_older_than_the_revoked_ttl_are_not_applied(vhost: BrokerURL, channel: Any) -> None:
    # Given a task revoked 2 s ago, and another revoked just now, both still queued, and no worker running
    app = make_app(vhost)
    job, ran = recording_task(app, "m.job")

    old, recent = job.delay(1), job.delay(2)
    old.revoke(timeout=0)
    time.sleep(2)
    recent.revoke(timeout=0)
    # When a worker that keeps revoked ids for 1.5 s starts
    with running_worker(app, revoked_ttl=1.5):
        job.delay(3)
        wait_until(lambda: sorted(ran) == [1, 3], what="the old revoked task and the last one")
    # Then the revocation older than that was not applied: that task ran; the recent one did not
    assert sorted(ran) == [1, 3]
    assert ready(channel, "work") == 0 and ready(channel, "work.dlq") == 0


@pytest.mark.parametrize("when", ["NaN", "Infinity", "-Infinity"])
def test_a_stored_revocation_with_a_time_that_is_not_a_number_is_skipped(when: str) -> None:
    assert stored.decode(f'{{"task_id": "t1", "time": {when}}}'.encode()) is None
    assert stored.decode(b'{"task_id": "t1", "time": 1700000000.5}') == ("t1", 1700000000.5)
