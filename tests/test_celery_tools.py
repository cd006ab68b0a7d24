"""Celery's own tools and ours, across both kinds of worker: remote control (``celery inspect``/``status``/
``control``, ``amqptasks inspect``/``control``), events (``celery events``) and a real Flower's HTTP API.

Per module, once: our worker (``--events``, rpc://, queue ``ours``, named ``ours@tools``), a Celery worker
(``celery@tools``, queue ``interop``) and Flower on a free port.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import celery
import celery.exceptions
import pytest

from amqptasks import App
from amqptasks.broker import BrokerURL, ManagementClient, open_blocking
from amqptasks.errors import TaskRevoked
from tests import celery_interop_app
from tests.celery_interop_app import QUEUE
from tests.celery_peers import REPO, celery_worker, module_vhost, our_project, our_worker
from tests.cli_helpers import Result, console_script, run
from tests.worker_helpers import Project, WorkerProcess

pytestmark = pytest.mark.broker

OURS, THEIRS = "ours@tools", "celery@tools"
GET_TIMEOUT = 20.0


def poll(check: Callable[[], Any], what: str, timeout: float = 30.0, every: float = 0.2) -> Any:
    """*check()*'s first truthy value, trying every *every* s for *timeout* s."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (OSError, ValueError, AssertionError) as exc:  # not up yet, or not there yet
            last = exc
        else:
            if last:
                return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")


@pytest.fixture(scope="module")
def tools_vhost(broker: BrokerURL, mgmt: ManagementClient) -> Iterator[BrokerURL]:
    with module_vhost(broker, mgmt) as vhost:
        yield vhost


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, tools_vhost: BrokerURL) -> Project:
    return our_project(tmp_path_factory.mktemp("tools") / "ours", tools_vhost, "rpc://")


@pytest.fixture(scope="module")
def ours_worker(project: Project) -> Iterator[WorkerProcess]:
    with our_worker(project, "-Q", "ours", "-n", OURS, "--events") as worker:
        yield worker


@pytest.fixture(scope="module")
def theirs_worker(tmp_path_factory: pytest.TempPathFactory, tools_vhost: BrokerURL) -> Iterator[Any]:
    with celery_worker(tmp_path_factory.mktemp("celery"), tools_vhost, [QUEUE], hostname=THEIRS,
                       backend="rpc://") as worker:  # fmt: skip
        yield worker


@pytest.fixture(scope="module")
def ours(project: Project, ours_worker: WorkerProcess) -> Iterator[App]:
    app = project.app()
    yield app
    app.close()


@pytest.fixture(scope="module")
def client(tools_vhost: BrokerURL) -> Iterator[celery.Celery]:
    app = celery_interop_app.make_app(tools_vhost.to_url(), "rpc://", name="tools-client")
    yield app
    app.close()


def celery_cli(vhost: BrokerURL, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "celery", "--broker", vhost.to_url(), *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False)


def ours_cli(project: Project, *args: str) -> Result:
    return run([*args, "app.yaml"], cwd=project.path, env=project.env)


# --- remote control: Celery's tools → our worker ---------------------------------------------------------------


def test_celery_inspect_ping_registered_and_status_list_our_worker(
    tools_vhost: BrokerURL, ours_worker: WorkerProcess, theirs_worker: Any
) -> None:
    ping = celery_cli(tools_vhost, "inspect", "ping", "--timeout", "2")
    registered = celery_cli(tools_vhost, "inspect", "registered", "--timeout", "2", "--json")
    status = celery_cli(tools_vhost, "status", "--timeout", "2")

    assert ping.returncode == 0, ping.stderr
    assert f"->  {OURS}: OK" in ping.stdout and f"->  {THEIRS}: OK" in ping.stdout
    assert ping.stdout.count("pong") == 2
    assert registered.returncode == 0, registered.stderr
    replies = json.loads(registered.stdout)
    assert {"math.add", "interop.fail", "interop.sleep"} <= set(replies[OURS])
    assert status.returncode == 0, status.stderr
    assert f"{OURS}: OK" in status.stdout and "2 nodes online" in status.stdout


def test_celerys_inspect_api_reads_our_workers_stats_queues_conf_and_active(
    client: celery.Celery, ours: App, ours_worker: WorkerProcess
) -> None:
    running = ours.send_task("interop.sleep", (3,), queue="ours")
    inspect = client.control.inspect(destination=[OURS], timeout=2)

    active = poll(lambda: (inspect.active() or {}).get(OURS), "our worker to report the running task")
    stats = inspect.stats()[OURS]
    queues = inspect.active_queues()[OURS]
    conf = inspect.conf()[OURS]
    assert [(a["id"], a["name"], a["hostname"]) for a in active] == [(running.id, "interop.sleep", OURS)]
    assert stats["pool"]["max-concurrency"] == 8 and stats["pid"] > 0 and stats["total"]["interop.sleep"] >= 1
    assert [q["name"] for q in queues] == ["ours"]
    assert conf["result_backend"] == "rpc://"
    assert inspect.reserved()[OURS] == [] and inspect.scheduled()[OURS] == []
    assert running.get(timeout=GET_TIMEOUT) == 3


def test_celerys_revoke_with_terminate_and_rate_limit_reach_our_worker(
    client: celery.Celery, ours: App, ours_worker: WorkerProcess
) -> None:
    # A sync task busy in Python code (interop.soft loops in short sleeps), terminated from Celery's API
    running = ours.send_task("interop.soft", (30,), queue="ours")
    inspect = client.control.inspect(destination=[OURS], timeout=2)
    poll(lambda: any(a["id"] == running.id for a in (inspect.active() or {}).get(OURS, [])), "the task to start")

    revoked = client.control.revoke(running.id, terminate=True, reply=True, destination=[OURS], timeout=2)
    limited = client.control.rate_limit("math.add", "100/m", reply=True, destination=[OURS], timeout=2)

    assert revoked == [{OURS: {"ok": "terminated"}}]
    with pytest.raises(TaskRevoked):
        running.get(timeout=GET_TIMEOUT)
    assert running.id in inspect.revoked()[OURS]
    assert limited == [{OURS: {"ok": "rate limit of math.add set to 100/m"}}]


def test_celery_control_shutdown_stops_our_worker(tools_vhost: BrokerURL, project: Project) -> None:
    with our_worker(project, "-Q", "ours", "-n", "doomed@tools") as doomed:
        result = celery_cli(tools_vhost, "control", "shutdown", "-d", "doomed@tools", "--timeout", "1")

        assert result.returncode == 0, result.stderr
        assert doomed.wait(timeout=20) == 0
        assert "Got shutdown from remote" in doomed.output


# --- remote control: our tools → Celery's worker ---------------------------------------------------------------


def test_amqptasks_inspect_lists_celery_workers_and_ours(
    project: Project, ours_worker: WorkerProcess, theirs_worker: Any
) -> None:
    ping = ours_cli(project, "inspect", "ping", "--timeout", "1.5")
    registered = ours_cli(project, "inspect", "registered", "--timeout", "1.5", "--json")
    stats = ours_cli(project, "inspect", "stats", "--timeout", "1.5", "--json")

    assert ping.code == 0, ping
    assert f"{OURS}: pong" in ping.stdout and f"{THEIRS}: pong" in ping.stdout
    tasks = {reply["hostname"]: reply["ok"] for reply in registered.json()}
    assert "interop.record" in tasks[THEIRS] and "interop.soft" in tasks[OURS]
    pools = {reply["hostname"]: reply["ok"]["pool"]["max-concurrency"] for reply in stats.json()}
    assert pools == {OURS: 8, THEIRS: 1}


def test_amqptasks_control_revoke_reaches_a_celery_worker(ours: App, project: Project, theirs_worker: Any) -> None:
    from amqptasks.result import AsyncResult

    # A task id revoked through our CLI before the Celery worker sees the task
    task_id = f"revoked-{time.monotonic_ns()}"
    revoked = ours_cli(project, "control", "revoke", task_id, "--timeout", "1.5", "--json")
    result = ours.send_task("math.add", (1, 2), queue=QUEUE, task_id=task_id)

    limited = ours_cli(project, "control", "rate_limit", "math.add", "10/m", "--timeout", "1.5", "--json")

    assert revoked.code == 0, revoked
    assert {r["hostname"]: r["ok"] for r in revoked.json()}[THEIRS] == f"tasks {{'{task_id}'}} flagged as revoked"
    assert limited.code == 0, limited
    assert {r["hostname"]: r["ok"] for r in limited.json()}[THEIRS] == "new rate limit set successfully"
    with pytest.raises(TaskRevoked):
        result.get(timeout=GET_TIMEOUT)
    assert AsyncResult(task_id, app=ours, backend=ours.result_backend).state == "REVOKED"


# --- events and Flower -------------------------------------------------------------------------------------------


def test_celery_events_dump_shows_our_workers_task_events(
    tools_vhost: BrokerURL, ours: App, ours_worker: WorkerProcess
) -> None:
    command = [sys.executable, "-m", "celery", "--broker", tools_vhost.to_url(), "events", "--dump"]
    dump = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(dump.stdout or ()), daemon=True)
    reader.start()
    try:
        # celery events is listening once it shows our worker's heartbeats (every 2 s)
        poll(lambda: any(OURS in line and "heartbeat" in line for line in lines), "celery events to see our worker")
        result = ours.send_task("math.add", (2, 2), queue="ours")
        assert result.get(timeout=GET_TIMEOUT) == 4
        poll(lambda: any(result.id in line and "succeeded" in line for line in lines), "the task-succeeded event")
    finally:
        dump.kill()
        dump.wait(5)
    mine = [line for line in lines if result.id in line]
    assert any("task received" in line and "math.add" in line for line in mine), "".join(lines)[-3000:]
    assert any("task started" in line for line in mine)


class EventLog:
    """Every event on ``celeryev`` from now on (a queue of this test's own), read as ``celery events`` reads them."""

    def __init__(self, vhost: BrokerURL) -> None:
        self.connection = open_blocking(vhost, connection_name="celeryev reader")
        self.channel = self.connection.channel()
        self.queue = self.channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
        self.channel.queue_bind(self.queue, "celeryev", "#")
        self.events: list[dict[str, Any]] = []

    def of(self, task_id: str) -> list[str]:
        while True:
            method, _props, body = self.channel.basic_get(self.queue, auto_ack=True)
            if method is None:
                break
            self.events.append(json.loads(body))
        return [e["type"] for e in self.events if e.get("uuid") == task_id]

    def close(self) -> None:
        self.connection.close()


def test_our_worker_sends_every_task_event_in_celerys_format(
    tools_vhost: BrokerURL, ours: App, ours_worker: WorkerProcess
) -> None:
    log = EventLog(tools_vhost)
    try:
        ok = ours.send_task("math.add", (1, 1), queue="ours")
        failed = ours.send_task("interop.fail", ("kaboom",), queue="ours")
        retried = ours.send_task("interop.flaky", queue="ours")
        rejected = ours.send_task("interop.refuse", queue="ours", ignore_result=True)
        revoked_id = f"revoked-{time.monotonic_ns()}"
        assert ours_cli_revoke(ours, revoked_id)
        ours.send_task("math.add", (1, 2), queue="ours", task_id=revoked_id, ignore_result=True)

        want = {
            ok.id: ["task-received", "task-started", "task-succeeded"],
            failed.id: ["task-received", "task-started", "task-failed"],
            retried.id: ["task-received", "task-started", "task-retried", "task-received", "task-started",
                         "task-succeeded"],
            rejected.id: ["task-received", "task-started", "task-rejected"],
            revoked_id: ["task-revoked"],  # as Celery: a revoked task is not "received"
        }  # fmt: skip
        poll(lambda: all(log.of(task_id) == types for task_id, types in want.items()),
             "every task's events", timeout=GET_TIMEOUT)  # fmt: skip
    except AssertionError:
        raise AssertionError({task_id: log.of(task_id) for task_id in want}) from None
    finally:
        log.close()
    by_type = {e["type"]: e for e in log.events if e.get("uuid") in (ok.id, failed.id)}
    assert by_type["task-received"]["name"] in ("math.add", "interop.fail")
    assert by_type["task-succeeded"]["result"] == "2" and by_type["task-succeeded"]["runtime"] >= 0
    assert "kaboom" in by_type["task-failed"]["exception"] and "Traceback" in by_type["task-failed"]["traceback"]
    assert all(e["hostname"] == OURS and e["clock"] > 0 and "timestamp" in e for e in by_type.values())


def ours_cli_revoke(app: App, task_id: str) -> bool:
    from amqptasks import control

    return bool(control.revoke(app, task_id, timeout=1.5))


def test_amqptasks_events_shows_a_celery_workers_task_events(
    tools_vhost: BrokerURL, project: Project, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # A Celery worker started with -E (task events on), and `amqptasks events --json` following
    with celery_worker(tmp_path_factory.mktemp("celery-e"), tools_vhost, ["interop_redis"], hostname="celery-e@tools",
                       extra=["-E"]):  # fmt: skip
        env = {**os.environ, **project.env}
        tail = subprocess.Popen([console_script(), "events", "app.yaml", "--json", "--limit", "3"], cwd=project.path,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            assert tail.stderr is not None and "following task events" in tail.stderr.readline()
            client = celery_interop_app.make_app(tools_vhost.to_url(), name="tools-events-client")
            sent = client.send_task("math.add", (3, 4), queue="interop_redis")
            client.close()
            out, err = tail.communicate(timeout=GET_TIMEOUT)
        finally:
            tail.kill()
    events = [json.loads(line) for line in out.splitlines()]
    assert [(e["type"], e["uuid"], e["hostname"]) for e in events] == [
        (kind, sent.id, "celery-e@tools") for kind in ("task-received", "task-started", "task-succeeded")
    ], err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def flower(
    tools_vhost: BrokerURL, tmp_path_factory: pytest.TempPathFactory, ours_worker: WorkerProcess
) -> Iterator[str]:
    port = _free_port()
    log_path = tmp_path_factory.mktemp("flower") / "flower.log"
    receivers_before = _event_receivers(tools_vhost)
    command = [sys.executable, "-m", "celery", "--broker", tools_vhost.to_url(), "flower", f"--port={port}",
               "--address=127.0.0.1", "--inspect_timeout=2000"]  # fmt: skip
    with log_path.open("w") as log:
        # Flower 2 answers its HTTP API only to authenticated users unless told otherwise.
        env = {**os.environ, "FLOWER_UNAUTHENTICATED_API": "true"}
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        poll(lambda: process.poll() is None and _get(f"{base}/healthcheck") == "OK", "Flower to answer",
             timeout=30)  # fmt: skip
        # Answering HTTP is not listening to events yet: a task's events sent before Flower's own celeryev queue
        # is bound never reach it (the exchange has no queue for them to wait in).
        poll(lambda: set(_event_receivers(tools_vhost)) - set(receivers_before), "Flower to consume events")
        yield base
    except AssertionError:
        raise AssertionError(f"Flower did not start:\n{log_path.read_text()[-3000:]}") from None
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _event_receivers(vhost: BrokerURL) -> list[str]:
    """The celeryev queues of the vhost with a consumer (as the management API last counted them: a passive declare
    cannot look, the receivers' queues are exclusive)."""
    queues = ManagementClient.for_broker(vhost).list_queues(vhost.vhost)
    return [q["name"] for q in queues if q["name"].startswith("celeryev.") and (q.get("consumers") or 0) > 0]


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        body = response.read().decode()
    try:
        return json.loads(body)
    except ValueError:
        return body


def test_flower_lists_our_worker_and_its_succeeded_and_failed_tasks(flower: str, ours: App) -> None:
    succeeded = [ours.send_task("math.add", (i, i), queue="ours") for i in range(3)]
    failed = ours.send_task("interop.fail", ("kaboom",), queue="ours")
    assert [r.get(timeout=GET_TIMEOUT) for r in succeeded] == [0, 2, 4]

    workers = poll(lambda: (_get(f"{flower}/api/workers?refresh=1") or {}).get(OURS), "Flower to list our worker")
    tasks = poll(
        lambda: (
            (found := _get(f"{flower}/api/tasks?workername={OURS}"))
            and {r.id for r in succeeded} | {failed.id} <= set(found)
            and found
        ),
        "Flower to list our tasks",
    )
    alive = _get(f"{flower}/api/workers?status=1")

    assert workers["stats"]["pool"]["max-concurrency"] == 8
    assert "math.add" in workers["registered"]
    assert [q["name"] for q in workers["active_queues"]] == ["ours"]
    assert alive.get(OURS) is True  # from its heartbeats
    for r in succeeded:
        assert (tasks[r.id]["state"], tasks[r.id]["name"], tasks[r.id]["worker"]) == ("SUCCESS", "math.add", OURS)
    assert tasks[failed.id]["state"] == "FAILURE" and "kaboom" in tasks[failed.id]["exception"]
    assert _get(f"{flower}/api/task/info/{succeeded[1].id}")["result"] == "2"
