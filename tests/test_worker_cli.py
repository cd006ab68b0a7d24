"""``amqptasks worker`` as a user runs it: errors, profiles, banner, JSON logs, shutdown, memory.

Each test writes a project (``app.yaml`` + ``tasks.py``) into a temporary directory and runs the console
script there, with ``AMQPTASKS_BROKER_URL`` pointing at the test's vhost.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from amqptasks import Signature
from amqptasks.broker import BrokerURL, ManagementClient
from amqptasks.constants import DELAY_LEVELS, delay_tier_name
from tests.cli_helpers import run
from tests.worker_helpers import (
    YAML,
    Project,
    get_all,
    queue_stats_when,
    ready,
    rss_kib,
    wait_until,
    worker_burst,
    worker_process,
)

pytestmark = pytest.mark.broker

TASKS = """
import time

@app.task(name="shop.add")
def add(x, y):
    record(task="shop.add", result=x + y)
    return x + y

@app.task(name="shop.slow")
def slow(seconds):
    record(task="shop.slow", event="start")
    time.sleep(seconds)
    record(task="shop.slow", event="end")
"""

PROFILES = (
    YAML
    + """
workers:
  checkout: {queues: [work], concurrency: 3, prefetch: 5}
  reports: {queues: [other]}
"""
)


@pytest.fixture
def project(tmp_path: Path, vhost: BrokerURL) -> Project:
    return Project.create(tmp_path, vhost, TASKS, PROFILES)


def test_unknown_queue_is_a_clear_error_without_traceback(project: Project) -> None:
    result = worker_burst(project, "-Q", "work,nosuch")
    assert result.code == 1
    assert "queue 'nosuch' does not exist on the broker" in result.stderr


def test_app_module_that_cannot_be_imported_is_a_usage_error(project: Project) -> None:
    result = run(["worker", "-A", "no_such_module:app", "-Q", "work"], cwd=project.path, env=project.env)
    assert result.code == 2
    assert "Invalid value for -A: cannot import 'no_such_module'" in result.stderr


def test_unknown_profile_lists_the_known_ones(project: Project) -> None:
    result = worker_burst(project, "--profile", "checkuot")
    assert result.code == 1
    assert "no worker profile 'checkuot' in the YAML (profiles: checkout, reports)" in result.stderr


def test_the_worker_runs_on_asyncio_when_told_to(project: Project) -> None:
    # Given a task waiting, and AMQPTASKS_EVENT_LOOP=asyncio
    with project.app() as app:
        app.send_task("shop.add", [1, 1])
    env = {**project.env, "AMQPTASKS_EVENT_LOOP": "asyncio"}

    # When a burst worker runs
    result = run(["worker", "-A", "tasks:app", "--burst", "-Q", "work"], cwd=project.path, env=env)

    # Then it ran the task on asyncio's own loop, and the banner says so
    assert result.code == 0, str(result)
    assert [(r["task"], r["result"]) for r in project.records()] == [("shop.add", 2)]
    assert "process(es) on asyncio," in result.stderr


def test_profile_from_the_yaml_sets_queues_and_concurrency_and_the_banner_shows_them(project: Project) -> None:
    # Given a task waiting in the profile's queue
    with project.app() as app:
        app.send_task("shop.add", [2, 3])

    # When a burst worker runs with the profile
    result = worker_burst(project, "--profile", "checkout")

    # Then it consumed the profile's queue, with its settings, and the banner says what it serves
    assert result.code == 0, str(result)
    assert [(r["task"], r["result"]) for r in project.records()] == [("shop.add", 5)]
    cores = os.cpu_count() or 1  # the profile does not say: one process per core
    assert f"concurrency 3 x {cores} process(es) on uvloop, prefetch 5" in result.stderr  # uvloop: a dependency
    assert "work <- tasks[work.#]; dead letters -> amqptasks.dlx -> work.dlq" in result.stderr
    assert "tasks:   shop.add, shop.slow" in result.stderr
    assert "other <-" not in result.stderr


def test_json_log_format_prints_one_object_per_line_with_an_event(project: Project) -> None:
    # Given a task that succeeds and one that names no registered task
    with project.app() as app:
        ok = app.send_task("shop.add", [1, 1])
        unknown = app.send_task("shop.nope")

    # When a burst worker runs with --log-format json, and the per-task lines on
    result = worker_burst(project, "-Q", "work", "--log-format", "json", "--log-tasks")

    # Then every line it printed is a JSON object with an event
    assert result.code == 0, str(result)
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert all(isinstance(line, dict) and line["event"] for line in lines)
    events = {(line["event"], line["message"].split(" ")[0]) for line in lines}
    assert {("received", f"shop.add[{ok.id}]"), ("started", f"shop.add[{ok.id}]"),
            ("succeeded", f"shop.add[{ok.id}]"), ("rejected", f"shop.nope[{unknown.id}]")} <= events  # fmt: skip
    [banner] = [line["message"] for line in lines if line["event"] == "banner"]
    assert "work <- tasks[work.#]" in banner


def test_default_worker_runs_a_process_per_core_and_logs_failures_but_not_each_success(project: Project) -> None:
    # Given tasks that succeed and one that names no registered task
    with project.app() as app:
        ok = [app.send_task("shop.add", [n, n]) for n in range(20)]
        unknown = app.send_task("shop.nope")

    # When a burst worker runs with no flags
    result = worker_burst(project, "-Q", "work")

    # Then one process per core ran, each under its own name, every task once
    assert result.code == 0, str(result)
    cores = os.cpu_count() or 1
    assert f"x {cores} process(es)" in result.stderr
    assert sorted(r["result"] for r in project.records()) == sorted(2 * n for n in range(20))
    # And the dead-lettered message is logged, but no success line
    assert f"shop.nope[{unknown.id}] rejected to the DLQ" in result.stderr
    assert not any(r.id in result.stderr for r in ok), result.stderr
    assert " succeeded in " not in result.stderr and " received" not in result.stderr
    if cores > 1:
        assert "worker-1" in result.stderr and "worker-2" in result.stderr  # the processes' log prefix


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if entry.name.isdigit() and int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_sigkill_of_a_multi_process_worker_takes_its_processes_and_their_tasks_with_it(
    project: Project, channel: Any
) -> None:
    # Given a worker of two processes, one of them running a 3 s task
    with project.app() as app:
        slow = app.send_task("shop.slow", [3])
    with worker_process(project, "-Q", "work", "--processes", "2") as worker:
        wait_until(lambda: [r.get("event") for r in project.records()] == ["start"], what="the task to start")
        processes = _children(worker.pid)
        assert len(processes) == 2, processes

        # When the worker (its first process) is killed with SIGKILL
        worker.signal(signal.SIGKILL)
        assert worker.wait() == -signal.SIGKILL

        # Then its processes die with it, and the task's message goes back to the queue, unfinished
        wait_until(lambda: not any(_alive(pid) for pid in processes), what="the worker's processes to exit")
        wait_until(lambda: ready(channel, "work") == 1, timeout=10, what="the message back in the queue")
    [(method, props, _)] = get_all(channel, "work")
    assert props.correlation_id == slow.id and method.redelivered
    assert [r.get("event") for r in project.records()] == ["start"]


def test_sigterm_lets_the_running_task_finish_and_hands_back_unstarted_messages_at_once(
    project: Project, channel: Any
) -> None:
    # Given a worker running a 2 s task, with 3 more messages prefetched behind it
    with project.app() as app:
        app.send_task("shop.slow", [2])
        for n in range(3):
            app.send_task("shop.add", [n, n])
    with worker_process(project, "-Q", "work", "-c", "1", "--processes", "1", "--log-tasks") as worker:
        worker.wait_for_log("shop.slow[")
        worker.wait_for_log("started")
        wait_until(lambda: ready(channel, "work") == 0, what="the worker to prefetch all 4")

        # When it gets SIGTERM
        worker.signal(signal.SIGTERM)
        sent = time.monotonic()

        # Then the unstarted messages are back in the queue at once, while the task still runs
        while ready(channel, "work") < 3 and time.monotonic() - sent < 5:
            time.sleep(0.02)
        handed_back = time.monotonic() - sent
        assert ready(channel, "work") == 3 and handed_back < 1.0, f"{handed_back:.2f} s"
        # And the worker exits 0 once the task has finished; its message was acknowledged
        assert worker.wait() == 0, worker.output
    assert [r.get("event") for r in project.records()] == ["start", "end"]
    messages = get_all(channel, "work")
    assert sorted(body[0] for _, _, body in messages) == [[0, 0], [1, 1], [2, 2]]
    assert "warm shutdown" in worker.output


def test_second_sigterm_goes_cold_and_the_running_task_message_returns_to_the_queue(
    project: Project, channel: Any
) -> None:
    # Given a worker running a 6 s task (a cold shutdown must not wait for it, even on a busy machine)
    with project.app() as app:
        slow = app.send_task("shop.slow", [6])
    with worker_process(project, "-Q", "work", "--log-tasks") as worker:
        worker.wait_for_log("started")

        # When it gets SIGTERM twice
        worker.signal(signal.SIGTERM)
        time.sleep(0.2)
        worker.signal(signal.SIGTERM)
        sent = time.monotonic()

        # Then it stops without waiting for the task, whose message goes back to the queue (redelivered)
        code = worker.wait()
        assert time.monotonic() - sent < 3.0, worker.output
        assert code == 0, worker.output
    [(method, props, _)] = get_all(channel, "work")
    assert props.correlation_id == slow.id and method.redelivered
    assert "cold shutdown" in worker.output


def test_pending_countdown_tasks_stay_on_the_broker_not_in_the_worker(
    project: Project, vhost: BrokerURL, channel: Any, mgmt: ManagementClient
) -> None:
    # Given an idle worker
    with worker_process(project, "-Q", "work") as worker:
        time.sleep(0.5)
        before = rss_kib(worker.pid)

        # When 1,000 tasks are published with a 60 s countdown
        with project.app() as app:
            app.publish_many([Signature("shop.add", (n, n), {}, {"countdown": 60}) for n in range(1000)])
        time.sleep(1.0)

        # Then they wait in the delay tiers; the worker holds none of them and its memory did not grow
        waiting = sum(ready(channel, delay_tier_name(level)) for level in range(DELAY_LEVELS))
        assert waiting == 1000
        assert ready(channel, "work") == 0
        stats = queue_stats_when(mgmt, vhost, "work", lambda q: "messages_unacknowledged" in q)
        assert stats["messages_unacknowledged"] == 0
        grown = rss_kib(worker.pid) - before
        assert grown < 1024, f"worker RSS grew by {grown} KiB"
        assert "shop.add[" not in worker.output
