"""Tasks that kill their worker process (SIGKILL, ``os._exit``, a segfault), in every pool, with and without a
supervisor: only the crasher is charged, it reaches its DLQ as ``worker-lost`` after at most max_redeliveries + 1
runs, and every innocent runs (once, unless its ack was lost with the process).

The worker subprocesses and the record file are those of tests/test_worker_faults.py; the DLQ is read with
``amqptasks dlq list`` as a user reads it.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from amqptasks import App
from amqptasks.broker import BrokerURL
from amqptasks.constants import dlq_name
from tests.cli_helpers import run
from tests.test_worker_faults import (  # noqa: F401  (fixtures)
    CRASH_TASK,
    QUEUE,
    TOPOLOGY,
    Record,
    WorkerProcess,
    app,
    publish,
    ready_count,
    record,
    report,
    spawn,
    wait_until,
)

pytestmark = pytest.mark.broker


def publish_crashers(app: App, kinds: list[str]) -> list[str]:
    return [r.id for r in app.publish_many([app.tasks[CRASH_TASK].s(how=how) for how in kinds])]


def dlq_rows(tmp_path: Path, url: str) -> list[dict[str, Any]]:
    """``amqptasks dlq list faults --json``: what a user sees in the DLQ, once every row has its failure record
    (the worker writes it just after it dead-lettered the message)."""
    config = tmp_path / "faults.yaml"
    config.write_text(TOPOLOGY)
    deadline = time.monotonic() + 15
    while True:
        listed = run(["dlq", "list", QUEUE, str(config), "--broker", url, "--json", "--limit", "1000"], cwd=tmp_path)
        assert listed.code == 0, str(listed)
        rows: list[dict[str, Any]] = listed.json()
        if all(r["last_error"] for r in rows) or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def dlq_depth(url: str) -> int:
    return ready_count(url, dlq_name(QUEUE))


def assert_only_crashers_dead_lettered(
    rows: list[dict[str, Any]], crashers: list[str], most_runs: int, record: Record
) -> None:
    assert sorted(r["id"] for r in rows) == sorted(crashers), "innocents in the DLQ, or crashers missing"
    for row in rows:
        assert row["last_error"].startswith("worker-lost: killed its worker"), row
        assert "worker faults-" in row["last_error"] and "pid " in row["last_error"], row
    starts = record.starts()
    assert all(1 <= starts[c] <= most_runs for c in crashers), {c: starts[c] for c in crashers}


def test_processes_parent_replaces_a_process_killed_by_its_task_and_only_the_crasher_is_dead_lettered(
    tmp_path: Path, app: App, vhost: BrokerURL, record: Record, spawn: Callable[..., WorkerProcess]
) -> None:
    # Given a task that SIGKILLs its own process, queued ahead of 60 good tasks
    [crasher] = publish_crashers(app, ["sigkill"])
    good = publish(app, [{"seconds": 0.01}] * 60)

    # When `amqptasks worker --processes 2` consumes them
    worker = spawn(vhost.to_url(), "--processes", "2", "-c", "2")
    wait_until(lambda: set(good) <= set(record.dones()) and dlq_depth(vhost.to_url()) == 1, 90,
               "every good task to run and the crasher to reach the DLQ", worker)  # fmt: skip

    # Then all 60 ran, only the crasher is in the DLQ (worker-lost, with the signal), and the worker still runs
    lost, duplicated = report("--processes 2, a task that SIGKILLs its process", good, record)
    kills = record.starts()[crasher]
    assert not lost and len(duplicated) <= 8 * kills, duplicated
    rows = dlq_rows(tmp_path, vhost.to_url())
    assert_only_crashers_dead_lettered(rows, [crasher], 6, record)
    assert kills == 6, f"the crasher ran {kills} times; max_redeliveries 5 allows 6"
    assert "killed by signal SIGKILL" in rows[0]["last_error"], rows[0]
    assert worker.process.poll() is None, worker.tail()
    log = worker.tail(400)
    assert f"was killed by signal SIGKILL while running task(s) {crasher}" in log, log
    assert "Traceback" not in log, log
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0, worker.tail()


def test_processes_parent_gives_up_with_a_clear_line_when_its_processes_keep_dying_at_start(
    tmp_path: Path, app: App, vhost: BrokerURL, record: Record, spawn: Callable[..., WorkerProcess]
) -> None:
    # Given a queue name that does not exist: every consuming process dies before it consumes anything
    worker = spawn(vhost.to_url(), "--processes", "2", "-Q", "no-such-queue")

    # When the parent has restarted them a few times
    code = worker.wait(60)

    # Then it exits 1, saying why once per death and that it gave up
    log = worker.tail(200)
    assert code == 1, log
    assert "before it consumed anything" in log and "keep dying at start" in log, log
    assert "queue 'no-such-queue' does not exist" in log, log


@pytest.mark.parametrize("pool", ["processes", "threads"])
def test_crashing_tasks_among_good_ones_reach_the_dlq_as_worker_lost_in_every_pool(
    pool: str, tmp_path: Path, app: App, vhost: BrokerURL, record: Record, spawn: Callable[..., WorkerProcess]
) -> None:
    # Given a segfault, an os._exit(1) and a SIGKILL among 60 good tasks, max_redeliveries 1
    good = publish(app, [{"seconds": 0.01}] * 20)
    crashers = publish_crashers(app, ["segv", "exit", "sigkill"])
    good += publish(app, [{"seconds": 0.01}] * 40)

    # When one worker runs them, in a pool of child processes, or in threads under a supervisor loop
    workers = [spawn(vhost.to_url(), "--pool", pool, "-c", "2", "--max-redeliveries", "1")]
    deadline = time.monotonic() + 90
    while not (set(good) <= set(record.dones()) and dlq_depth(vhost.to_url()) == 3):
        assert time.monotonic() < deadline, "\n".join(w.tail() for w in workers)
        if workers[-1].exited(0.1) is not None:
            assert pool == "threads", f"the worker died\n{workers[-1].tail()}"
            workers.append(spawn(vhost.to_url(), "--pool", pool, "-c", "2", "--max-redeliveries", "1"))

    # Then every good task ran, each crasher ran twice and is in the DLQ as worker-lost, no innocent is there
    lost, duplicated = report(f"pool {pool}: 3 crashers among 60 good", good, record)
    assert not lost and len(duplicated) <= 8 * 6, duplicated
    assert_only_crashers_dead_lettered(dlq_rows(tmp_path, vhost.to_url()), crashers, 2, record)
    assert all(record.starts()[c] == 2 for c in crashers)
    if pool == "processes":
        assert len(workers) == 1 and workers[0].process.poll() is None
        assert "child process" in workers[0].tail(300)
    else:
        assert len(workers) == 1 + 6, f"{len(workers)} workers for 6 crashes"
    assert not any("Traceback" in w.tail(400) for w in workers), "\n".join(w.tail() for w in workers)


@pytest.mark.faults_heavy
@pytest.mark.timeout(400)
def test_five_segfaults_and_five_exits_among_500_under_a_supervisor_loop_charge_only_the_crashers(
    tmp_path: Path, app: App, vhost: BrokerURL, record: Record, spawn: Callable[..., WorkerProcess]
) -> None:
    # Given 5 segfaulting and 5 os._exit(1) tasks spread among 500 good ones
    good: list[str] = []
    crashers: list[str] = []
    for i in range(10):
        good += publish(app, [{"seconds": 0.005}] * 50)
        crashers += publish_crashers(app, ["segv" if i % 2 else "exit"])

    # When the default worker (threads pool) runs them, restarted by a supervisor loop whenever it exits
    options = ("--max-redeliveries", "2")
    workers = [spawn(vhost.to_url(), *options)]
    deadline = time.monotonic() + 360
    while not (set(good) <= set(record.dones()) and dlq_depth(vhost.to_url()) == len(crashers)):
        assert time.monotonic() < deadline, workers[-1].tail()
        if workers[-1].exited(0.1) is not None:
            workers.append(spawn(vhost.to_url(), *options))

    # Then the 500 ran, no good task is in the DLQ, and every crasher is there after at most 3 runs
    lost, duplicated = report(f"10 crashers among 500 good, {len(workers) - 1} restarts", good, record)
    assert not lost, lost
    assert len(duplicated) <= 32 * (len(workers) - 1), duplicated
    assert_only_crashers_dead_lettered(dlq_rows(tmp_path, vhost.to_url()), crashers, 3, record)
    print(f"crasher runs: {sorted(record.starts()[c] for c in crashers)}; restarts {len(workers) - 1}")
