"""An app used before ``fork()`` keeps working in the parent and in the child (gunicorn --preload, uWSGI,
multiprocessing's fork start method): a real fork, a real worker subprocess, every publish confirmed in time."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from amqptasks import App
from amqptasks.broker import BrokerURL
from tests.worker_helpers import YAML, Project, WorkerProcess, wait_until, worker_process

TASKS = """
@app.task(name="tasks.add")
def add(x, y, who):
    record(task="add", who=who, x=x, y=y)
    return x + y
"""

#: Each publish (and, with results, its get()) must finish within this.
BOUND_S = 10.0


@pytest.fixture(params=["no results", "rpc://", "redis://"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "redis://":
        return str(request.getfixturevalue("redis_url"))
    return str(request.param)


@pytest.fixture
def project(tmp_path: Path, vhost: BrokerURL, backend: str) -> Project:
    yaml_text = YAML + (f"results: {{backend: '{backend}'}}\n" if backend != "no results" else "")
    return Project.create(tmp_path, vhost, TASKS, yaml_text)


@pytest.fixture
def worker(project: Project) -> Iterator[WorkerProcess]:
    with worker_process(project, "-Q", "work") as running:
        yield running


def publish_bounded(app: App, who: str, x: int, wait_result: bool) -> Any:
    """``send_task`` (and ``get()``) in this thread, which must return within BOUND_S: a hang raises.

    In this thread, not another: a thread's publisher connection is what a fork copies into the child."""
    started = time.monotonic()
    with _deadline(f"{who}: the publish did not return within {BOUND_S:g} s"):
        result = app.send_task("tasks.add", (x, 1, who))
        value = result.get(timeout=BOUND_S) if wait_result else result.id
    assert time.monotonic() - started < BOUND_S
    return value


@contextlib.contextmanager
def _deadline(message: str) -> Iterator[None]:
    """SIGALRM after BOUND_S raises in this (main) thread, even inside a blocking socket wait; pytest-timeout's own
    alarm is put back afterwards."""

    def expire(signum: int, frame: Any) -> None:
        raise AssertionError(message)

    previous = signal.signal(signal.SIGALRM, expire)
    outer, _ = signal.setitimer(signal.ITIMER_REAL, BOUND_S)
    started = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer:
            signal.setitimer(signal.ITIMER_REAL, max(0.01, outer - (time.monotonic() - started)))


def in_child(publish: Callable[[], Any]) -> int:
    """The child's side: publish, exit 0; any failure is printed and exits 1; a hang ends it by SIGALRM."""
    os.environ.pop("PYTEST_CURRENT_TEST", None)
    try:
        publish()
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


def wait_child(pid: int) -> int:
    deadline = time.monotonic() + BOUND_S + 10
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    raise AssertionError("the child did not finish")


def expect_all_three_ran(project: Project) -> None:
    wait_until(lambda: len(project.records()) >= 3, timeout=BOUND_S, what="the three tasks to run")
    assert sorted((r["who"], r["x"]) for r in project.records()) == [("child", 2), ("parent", 1), ("parent", 3)]


def with_os_fork(child: Callable[[], Any]) -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(in_child(child))
    return wait_child(pid)


def with_multiprocessing_fork(child: Callable[[], Any]) -> int:
    process = multiprocessing.get_context("fork").Process(target=lambda: os._exit(in_child(child)))
    process.start()
    process.join(BOUND_S + 10)
    return -1 if process.exitcode is None else process.exitcode


@pytest.mark.parametrize("fork", [with_os_fork, with_multiprocessing_fork], ids=["os.fork", "multiprocessing"])
def test_parent_publishes_forks_child_publishes_parent_publishes_again(
    project: Project, worker: WorkerProcess, backend: str, fork: Callable[[Callable[[], Any]], int]
) -> None:
    # Given an app that published (its connection, and with rpc:// its reply thread, exist) before forking
    app = project.app()
    results = backend != "no results"
    try:
        first = publish_bounded(app, "parent", 1, results)
        # When the process forks, the child publishes (and reads its result), then the parent publishes again
        assert fork(lambda: _child_publishes(app, results)) == 0, "the child failed (see its traceback above)"
        third = publish_bounded(app, "parent", 3, results)
    finally:
        app.close()
    # Then all three were confirmed within the bound and ran; with a backend, each result was read where awaited
    if results:
        assert (first, third) == (2, 4)
    expect_all_three_ran(project)


def _child_publishes(app: App, results: bool) -> None:
    value = publish_bounded(app, "child", 2, results)
    if results:
        assert value == 3, value
