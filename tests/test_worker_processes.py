"""``--pool processes``: sync tasks run in forked children that time limits can interrupt and kill.

Broker tests run the real ``amqptasks worker ... --pool processes --burst`` in a temporary directory holding the
tasks module and its YAML; every task run appends one JSON line (its pid, its worker's pid, what it saw) to a file
there -- the side channel the tests read. The pool's own behaviour is also tested in-process, without a broker.
"""

from __future__ import annotations

import asyncio
import json
import os
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from amqptasks import App
from amqptasks.broker import BrokerURL
from amqptasks.config import load_config_text
from amqptasks.constants import ENV_BROKER_URL
from amqptasks.errors import AmqpTasksError, Reject, Retry, SoftTimeLimitExceeded, TimeLimitExceeded
from amqptasks.message.protocol import TaskMessage
from amqptasks.worker.execution import Executor
from amqptasks.worker.processes import ProcessPool, WorkerLostError
from amqptasks.worker.request import Request
from amqptasks.worker.setup import plan_worker
from tests.cli_helpers import Result, run

QUEUE = "work"
YAML = f"""
topology:
  provision: true
  queues:
    - name: {QUEUE}
      dead_letter: auto
"""
TASKS = """
import json
import os
import time
from pathlib import Path

from amqptasks import App
from amqptasks.errors import SoftTimeLimitExceeded

app = App.from_config(Path(__file__).with_name("app.yaml"))
RUNS = Path(__file__).with_name("runs.jsonl")


def record(task, **fields):
    line = {"task": task, "pid": os.getpid(), "worker": os.getppid(), **fields}
    with RUNS.open("a", encoding="utf-8") as out:
        out.write(json.dumps(line) + "\\n")


@app.task(name="proc.whoami", bind=True)
def whoami(self, n):
    record("whoami", n=n, id=self.request.id)


@app.task(name="proc.slow", soft_time_limit=0.3)
def slow():
    started = time.monotonic()
    try:
        time.sleep(10)
    except SoftTimeLimitExceeded as exc:
        record("slow", caught=f"{type(exc).__name__}: {exc}", after=time.monotonic() - started)


@app.task(name="proc.stuck", time_limit=1)
def stuck():
    record("stuck")
    time.sleep(30)


@app.task(name="proc.crash")
def crash():
    record("crash")
    os._exit(1)
"""


# --- with a broker: the real worker command ------------------------------------------------------------------


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "app.yaml").write_text(textwrap.dedent(YAML), encoding="utf-8")
    (tmp_path / "proctasks.py").write_text(TASKS, encoding="utf-8")
    return tmp_path


@pytest.fixture
def app(vhost: BrokerURL) -> Iterator[App]:
    """The publishing side: the same topology, tasks sent by name."""
    application = App(config=load_config_text(YAML, "app.yaml", broker_url=vhost.to_url()))
    yield application
    application.close()


def send(app: App, task: str, *args: Any) -> str:
    return app.send_task(task, args, queue=QUEUE).id


def work(project: Path, vhost: BrokerURL, *options: str) -> Result:
    """``amqptasks worker --pool processes --burst`` until the queue is drained."""
    args = ["worker", "-A", "proctasks:app", "-Q", QUEUE, "--pool", "processes", "--burst", *options]
    result = run(args, cwd=project, env={ENV_BROKER_URL: vhost.to_url()})
    assert result.code == 0, str(result)
    return result


def runs(project: Path, task: str) -> list[dict[str, Any]]:
    path = project / "runs.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    return [line for line in map(json.loads, lines) if line["task"] == task]


def dead_letters(channel: Any) -> list[str]:
    """The task names in the queue's DLQ (drained)."""
    names: list[str] = []
    while True:
        method, props, _ = channel.basic_get(f"{QUEUE}.dlq", auto_ack=True)
        if method is None:
            return names
        names.append(props.headers["task"])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sync_tasks_run_in_child_processes_that_see_their_request(project: Path, vhost: BrokerURL, app: App) -> None:
    # Given four tasks
    ids = [send(app, "proc.whoami", n) for n in range(4)]

    # When a processes-pool worker with two children drains the queue
    result = work(project, vhost, "-c", "2")

    # Then each ran in a child of the worker, never in the worker itself, with its own self.request.id
    done = runs(project, "whoami")
    assert sorted(r["id"] for r in done) == sorted(ids)
    workers = {r["worker"] for r in done}
    assert len(workers) == 1 and workers != {os.getpid()}
    children = {r["pid"] for r in done}
    assert 1 <= len(children) <= 2 and not children & workers
    assert "pool:    processes" in result.stderr


def test_a_child_is_replaced_after_max_tasks_per_child(project: Path, vhost: BrokerURL, app: App) -> None:
    # Given six tasks
    for n in range(6):
        send(app, "proc.whoami", n)

    # When two children each run at most two tasks
    work(project, vhost, "-c", "2", "--max-tasks-per-child", "2")

    # Then at least three children took turns, none running more than two
    pids = [r["pid"] for r in runs(project, "whoami")]
    assert len(pids) == 6
    assert len(set(pids)) >= 3
    assert max(pids.count(pid) for pid in pids) <= 2


def test_soft_time_limit_raises_inside_the_task_in_its_child(
    project: Path, vhost: BrokerURL, app: App, channel: Any
) -> None:
    # Given a task sleeping 10 s under a 0.3 s soft limit, which catches SoftTimeLimitExceeded and returns
    send(app, "proc.slow")

    # When the worker runs it, with the per-task lines on
    result = work(project, vhost, "-c", "1", "--log-tasks")

    # Then the exception interrupted the sleep inside the child, and the task succeeded
    [slow] = runs(project, "slow")
    assert slow["caught"] == "SoftTimeLimitExceeded: soft time limit (0.3 s) exceeded"
    assert 0.25 < slow["after"] < 2
    assert "succeeded" in result.stderr
    assert dead_letters(channel) == []


def test_hard_time_limit_kills_the_child_dead_letters_the_message_and_later_tasks_run(
    project: Path, vhost: BrokerURL, app: App, channel: Any
) -> None:
    # Given a task stuck for 30 s under a 1 s hard limit, then two more tasks behind it
    send(app, "proc.stuck")
    send(app, "proc.whoami", 1)
    send(app, "proc.whoami", 2)

    # When a one-child worker drains the queue
    result = work(project, vhost, "-c", "1")

    # Then the stuck task's child was killed and its message dead-lettered, and a fresh child ran the others
    [stuck] = runs(project, "stuck")
    assert not alive(stuck["pid"])
    assert dead_letters(channel) == ["proc.stuck"]
    assert "TimeLimitExceeded: hard time limit (1 s) exceeded" in result.stderr
    later = runs(project, "whoami")
    assert sorted(r["n"] for r in later) == [1, 2]
    assert stuck["pid"] not in {r["pid"] for r in later}


def test_a_task_that_ends_its_process_is_dead_lettered_and_the_worker_goes_on(
    project: Path, vhost: BrokerURL, app: App, channel: Any
) -> None:
    # Given a task calling os._exit(1), then another task
    send(app, "proc.crash")
    send(app, "proc.whoami", 1)

    # When a one-child worker that allows no run after a crash drains the queue
    result = work(project, vhost, "-c", "1", "--max-redeliveries", "0")

    # Then the message is dead-lettered as worker-lost with a clear log line, and the next task runs in a fresh child
    [crash] = runs(project, "crash")
    assert dead_letters(channel) == ["proc.crash"]
    assert f"its child process {crash['pid']} exited with code 1; a fresh child replaces it" in result.stderr
    assert ("rejected to the DLQ: worker-lost: killed its worker 1 times (max_redeliveries 0); last: worker "
            in result.stderr)  # fmt: skip
    assert f"the child process running it (pid {crash['pid']}) exited with code 1" in result.stderr
    [later] = runs(project, "whoami")
    assert later["pid"] != crash["pid"]


# --- without a broker: the pool itself -----------------------------------------------------------------------

local = App()


class TwoArguments(Exception):
    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a} and {b}")
        self.a, self.b = a, b


@local.task(name="local.retry")
def retry_later() -> None:
    raise Retry(ValueError("busy"), countdown=5)


@local.task(name="local.reject")
def reject_requeue() -> None:
    raise Reject("not now", requeue=True)


@local.task(name="local.two")
def two_arguments() -> None:
    raise TwoArguments(1, 2)


@local.task(name="local.unpicklable")
def unpicklable() -> None:
    class Local(Exception):
        pass

    raise Local("from a local class")


@local.task(name="local.nap")
def nap(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


@local.task(name="local.exit")
def exit_three() -> None:
    raise SystemExit(3)


def request(task: str) -> Request:
    message = TaskMessage(id=f"id-{task}", task=task)
    return Request(
        id=message.id, task=task, args=(), kwargs={}, retries=0, delivery_info={}, headers={}, reply_to=None,
        eta=None, expires=None, hostname="test", redelivered=False, root_id=None, parent_id=None, message=message,
    )  # fmt: skip


def in_pool(task: str, *args: Any, soft: float | None = None, hard: float | None = None) -> Any:
    """Run *task* in a fresh one-child pool; its result, or the exception it raised here."""

    async def go() -> Any:
        pool = ProcessPool(local, 1)
        try:
            return await pool.run(task, args, {}, request(task), soft, hard)
        except Exception as exc:
            return exc
        finally:
            pool.shutdown(wait=False)

    return asyncio.run(go())


def test_task_control_exceptions_keep_their_meaning_across_the_process_boundary() -> None:
    retry = in_pool("local.retry")
    assert isinstance(retry, Retry) and retry.countdown == 5 and repr(retry.exc) == "ValueError('busy')"
    reject = in_pool("local.reject")
    assert isinstance(reject, Reject) and reject.requeue is True and reject.reason == "not now"
    two = in_pool("local.two")
    assert isinstance(two, TwoArguments) and (two.a, two.b, str(two)) == (1, 2, "1 and 2")
    assert "raise TwoArguments(1, 2)" in "\n".join(two.__notes__)  # the child's traceback


def test_an_unpicklable_exception_arrives_as_a_runtime_error_with_its_repr() -> None:
    error = in_pool("local.unpicklable")
    assert isinstance(error, RuntimeError)
    assert str(error).startswith("Local('from a local class') (cannot be sent back from the child process")


def test_soft_and_hard_limits_in_a_child() -> None:
    soft = in_pool("local.nap", 5, soft=0.2)
    assert isinstance(soft, SoftTimeLimitExceeded)
    started = time.monotonic()
    hard = in_pool("local.nap", 5, hard=0.3)
    assert isinstance(hard, TimeLimitExceeded) and time.monotonic() - started < 2


def test_sys_exit_in_a_task_is_a_lost_child() -> None:
    lost = in_pool("local.exit")
    assert isinstance(lost, WorkerLostError) and "exited with code 3" in str(lost)


def test_shutdown_stops_every_child() -> None:
    async def go() -> list[int]:
        pool = ProcessPool(local, 3)
        pids = pool.pids
        busy = asyncio.ensure_future(pool.run("local.nap", (30,), {}, request("local.nap"), None, None))
        await asyncio.sleep(0.2)
        pool.shutdown(wait=False)
        with pytest.raises(asyncio.CancelledError):  # unsettled: its message would go back to the queue
            await busy
        return pids

    pids = asyncio.run(go())
    assert len(pids) == 3 and not any(alive(pid) for pid in pids)


@local.task(name="local.pid_async")
async def pid_async() -> int:
    return os.getpid()


def test_the_processes_pool_runs_sync_tasks_in_children_and_async_tasks_on_the_loop() -> None:
    async def go() -> tuple[int, int]:
        executor = Executor(2, pool="processes", app=local)
        try:
            on_loop = await executor.run(pid_async.run_callable(), (), {}, request("local.pid_async"), None, None)
            in_child = await executor.run(nap.run_callable(), (0,), {}, request("local.nap"), None, None)
        finally:
            executor.shutdown(wait=True)
        with pytest.raises(asyncio.CancelledError):  # nothing runs after shutdown, nothing is dead-lettered
            await executor.run(nap.run_callable(), (0,), {}, request("local.nap"), None, None)
        return on_loop, in_child

    on_loop, in_child = asyncio.run(go())
    assert on_loop == os.getpid() and in_child != os.getpid()


def test_max_tasks_per_child_needs_the_processes_pool() -> None:
    config = load_config_text("{}", "app.yaml")
    plan = plan_worker(config, ["q"], None, {"pool": "processes", "max_tasks_per_child": 5})
    assert (plan.settings.pool, plan.settings.max_tasks_per_child) == ("processes", 5)
    with pytest.raises(AmqpTasksError, match="needs --pool processes"):
        plan_worker(config, ["q"], None, {"max_tasks_per_child": 5})
