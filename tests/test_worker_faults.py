"""Worker faults on a real broker: nothing published is lost; duplicates are possible, counted and printed.

On the shared broker (each test in its own vhost): a worker killed with SIGKILL mid-task, a warm shutdown, the
worker's connection closed from the broker side. On a private node (tests/broker_node.py), because they restart or
reconfigure the broker: a broker restart in the middle of a batch, a channel closed for a consumer timeout.

Tasks that kill their own process (SIGKILL, ``os._exit``, a segfault) in every pool, with and without a supervisor:
only the crasher is charged (see amqptasks/worker/journal.py) and it reaches its DLQ as worker-lost.

Workers run as ``amqptasks worker`` subprocesses, as a user runs them. Every run of the task appends
``start <id>`` and ``done <id>`` to a record file (one ``O_APPEND`` write per line), so lost and duplicated tasks
are counted from outside the worker, whatever the worker believes it did.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from amqptasks import App
from amqptasks.broker import BrokerURL, ManagementClient
from amqptasks.config import load_config_text
from amqptasks.constants import ENV_BROKER_URL, ENV_CONFIG, dlq_name
from amqptasks.worker.journal import ENV_JOURNAL_DIR
from tests.broker_node import BrokerNode, private_node
from tests.cli_helpers import console_script, run
from tests.tcp_proxy import tcp_proxy

REPO = Path(__file__).resolve().parents[1]
QUEUE = "faults"
TASK = "faults.work"
#: The worker subprocesses find their record file and the management URL to use in these variables.
ENV_RECORD = "AMQPTASKS_TEST_FAULTS_RECORD"
ENV_MANAGEMENT = "AMQPTASKS_TEST_FAULTS_MANAGEMENT_URL"
#: The private node has no management plugin. Without an explicit management URL, provisioning would derive
#: http://127.0.0.1:15672 from the AMQP URL and read the *shared* broker's vhost instead; nothing listens on port 1,
#: so provisioning probes the private node over AMQP.
NO_MANAGEMENT = "http://127.0.0.1:1"

TOPOLOGY = f"""
topology:
  provision: true
  queues:
    - name: {QUEUE}
      dead_letter: auto
"""
#: Crashes a task can cause: the whole process it runs in dies, and it can write nothing afterwards.
CRASH_TASK = "faults.crash"


# --- the app the worker subprocesses run ----------------------------------------------------------------------


def make_app(broker_url: str, management_url: str | None = None) -> App:
    """One task, ``faults.work``: records its start, sleeps, records its end (durable queue, persistent messages)."""
    broker = f"broker:\n  management_url: '{management_url}'\n" if management_url else ""
    config = load_config_text(broker + TOPOLOGY, "faults.yaml", broker_url=broker_url)
    app = App(config=config, broker_url=broker_url)

    @app.task(name=TASK, queue=QUEUE, bind=True)
    def work(self: Any, seconds: float = 0.0, slow_first_run_only: bool = False) -> None:
        record = Record(Path(os.environ[ENV_RECORD]))
        task_id = self.request.id
        if slow_first_run_only and record.starts()[task_id]:
            seconds = 0.0
        record.write("start", task_id)
        time.sleep(seconds)
        record.write("done", task_id)

    @app.task(name=CRASH_TASK, queue=QUEUE, bind=True)
    def crash(self: Any, how: str) -> None:
        Record(Path(os.environ[ENV_RECORD])).write("start", self.request.id)
        die(how)

    return app


def die(how: str) -> None:
    """The process dies: SIGKILL, os._exit(1) or a segfault (no core file)."""
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == "exit":
        os._exit(1)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    ctypes.string_at(0)  # SIGSEGV


def __getattr__(name: str) -> App:
    # `amqptasks worker -A tests.test_worker_faults:worker_app` needs a module attribute; build it from the worker's
    # environment on first access, so that importing this module (pytest does) builds no App.
    if name == "worker_app":
        return make_app(os.environ[ENV_BROKER_URL], os.environ.get(ENV_MANAGEMENT))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Record:
    """The side channel: ``start <id>`` / ``done <id>`` lines appended by every run of the task."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, event: str, task_id: str) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{event} {task_id}\n".encode())  # one write: lines never interleave
        finally:
            os.close(fd)

    def _count(self, event: str) -> Counter[str]:
        if not self.path.exists():
            return Counter()
        words = (line.split() for line in self.path.read_text().splitlines())
        return Counter(w[1] for w in words if len(w) == 2 and w[0] == event)

    def starts(self) -> Counter[str]:
        return self._count("start")

    def dones(self) -> Counter[str]:
        return self._count("done")


def report(what: str, published: list[str], record: Record) -> tuple[set[str], dict[str, int]]:
    """Lost ids and duplicated ids (id -> completed runs), printed for the test log."""
    dones = record.dones()
    lost = set(published) - set(dones)
    duplicated = {task_id: n for task_id, n in dones.items() if n > 1}
    print(
        f"\n{what}: published {len(published)}, completed {len(set(dones) & set(published))}, lost {len(lost)}, "
        f"duplicated {len(duplicated)} (extra runs {sum(duplicated.values()) - len(duplicated)}), "
        f"starts {sum(record.starts().values())}"
    )
    return lost, duplicated


# --- worker subprocesses --------------------------------------------------------------------------------------


class WorkerProcess:
    """``amqptasks worker -A tests.test_worker_faults:worker_app -Q faults`` in a session of its own."""

    def __init__(
        self, broker_url: str, record: Record, log: Path, *options: str, management: str | None, journals: str | None
    ) -> None:
        self.hostname = f"faults-{uuid.uuid4().hex[:8]}@localhost"
        self.connection_name = f"amqptasks worker {self.hostname}"
        self.log = log
        env = {k: v for k, v in os.environ.items() if k not in (ENV_BROKER_URL, ENV_CONFIG, ENV_MANAGEMENT)}
        # Each test's own journals: another test's dead workers are none of its business.
        journals = journals or str(record.path.parent / "journals")
        env.update({ENV_BROKER_URL: broker_url, ENV_RECORD: str(record.path), ENV_JOURNAL_DIR: journals})
        if management is not None:
            env[ENV_MANAGEMENT] = management
        # One consuming process (not one per core): these tests find the worker's connection by its name.
        single = [] if "--processes" in options else ["--processes", "1"]
        command = [console_script(), "worker", "-A", "tests.test_worker_faults:worker_app", "-Q", QUEUE,
                   "-n", self.hostname, *single, *options]  # fmt: skip
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                command, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def signal(self, signum: int) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signum)

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker {self.hostname} still running after {timeout:g} s\n{self.tail()}", pytrace=False)

    def exited(self, timeout: float) -> int | None:
        """The exit code within *timeout* seconds, or None while it still runs."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def finish(self) -> int:
        """Its exit code once its work is done: it exits by itself in burst mode, else (see
        test_burst_worker_exits_after_draining_a_queue_longer_than_its_prefetch) a SIGTERM stops it."""
        code = self.exited(2.0)
        if code is None:
            self.signal(signal.SIGTERM)
            code = self.wait(15)
        return code

    def tail(self, lines: int = 60) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.log.name}\n" + "\n".join(text.splitlines()[-lines:])

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()  # only our own child, by its pid
            self.process.wait(timeout=10)


@pytest.fixture
def record(tmp_path: Path) -> Record:
    return Record(tmp_path / "record.txt")


@pytest.fixture
def spawn(tmp_path: Path, record: Record) -> Iterator[Callable[..., WorkerProcess]]:
    """``spawn(broker_url, *cli_options, management=None)`` starts a worker; every one is killed at teardown."""
    started: list[WorkerProcess] = []

    def start(
        broker_url: str, *options: str, management: str | None = None, journals: str | None = None
    ) -> WorkerProcess:
        log = tmp_path / f"worker-{len(started) + 1}.log"
        worker = WorkerProcess(broker_url, record, log, *options, management=management, journals=journals)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.close()


def wait_until(condition: Callable[[], bool], timeout: float, what: str, *workers: WorkerProcess) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            logs = "\n".join(w.tail() for w in workers)
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}\n{logs}", pytrace=False)
        time.sleep(0.05)


def publish(app: App, calls: list[dict[str, Any]]) -> list[str]:
    """Publish ``faults.work(**kwargs)`` for each call (confirmed, persistent); returns the task ids in order."""
    task = app.tasks[TASK]
    return [result.id for result in app.publish_many([task.s(**kwargs) for kwargs in calls])]


def ready_count(url: str, queue: str = QUEUE) -> int:
    """Messages ready in the queue, as the broker counts them right now (the management API lags by seconds)."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        return int(connection.channel().queue_declare(queue, passive=True).method.message_count)
    finally:
        connection.close()


# --- shared broker, own vhost ---------------------------------------------------------------------------------


@pytest.fixture
def app(vhost: BrokerURL) -> Iterator[App]:
    application = make_app(vhost.to_url())
    application.provision()
    yield application
    application.close()


def all_completed(published: list[str], record: Record) -> Callable[[], bool]:
    return lambda: set(published) <= set(record.dones())


def worker_connections(mgmt: ManagementClient, vhost: BrokerURL, worker: WorkerProcess) -> Callable[[], list[Any]]:
    """Waits until the management API shows the worker's connection (its statistics lag by up to ~5 s); returns
    a function listing the worker's connections in the API."""

    def connections() -> list[dict[str, Any]]:
        return [c for c in mgmt.list_connections()
                if c.get("vhost") == vhost.vhost and c.get("user_provided_name") == worker.connection_name]  # fmt: skip

    wait_until(lambda: len(connections()) == 1, 15, f"connection {worker.connection_name!r} in the API", worker)
    return connections


def test_task_of_a_sigkilled_worker_runs_again_on_the_next_worker_and_nothing_is_lost(
    app: App, vhost: BrokerURL, record: Record, spawn: Callable[..., WorkerProcess]
) -> None:
    # Given a slow task (acks_late, the default) and quick ones behind it, and a worker running the slow one
    slow = publish(app, [{"seconds": 2.0}])[0]
    published = [slow, *publish(app, [{"seconds": 0.01}] * 9)]
    first = spawn(vhost.to_url(), "-c", "2")
    wait_until(lambda: record.starts()[slow] == 1, 20, "the slow task to start", first)

    # When the worker is killed with SIGKILL in the middle of it, and a new worker drains the queue
    first.signal(signal.SIGKILL)
    assert first.wait(10) == -signal.SIGKILL
    assert record.dones()[slow] == 0, "the slow task finished before the kill: the test proves nothing"
    second = spawn(vhost.to_url(), "-c", "2", "--burst")
    wait_until(all_completed(published, record), 30, "every task to complete", second)
    code = second.finish()

    # Then the slow task ran again and completed, and every task completed
    lost, _ = report("SIGKILL mid-task", published, record)
    assert not lost
    assert (record.starts()[slow], record.dones()[slow]) == (2, 1)
    assert code == 0, second.tail()
    assert ready_count(vhost.to_url()) == 0


def test_burst_worker_exits_after_draining_a_queue_longer_than_its_prefetch(
    app: App, vhost: BrokerURL, record: Record, spawn: Callable[..., WorkerProcess]
) -> None:
    # Given 100 quick tasks, more than a worker with concurrency 2 prefetches (8)
    published = publish(app, [{"seconds": 0.01}] * 100)

    # When a burst worker has completed them all
    worker = spawn(vhost.to_url(), "-c", "2", "--burst")
    wait_until(all_completed(published, record), 30, "every task to complete", worker)

    # Then it exits 0 by itself
    assert worker.exited(5.0) == 0, f"the burst worker still runs 5 s after the last task\n{worker.tail(10)}"


def _warm_shutdown(app: App, vhost: BrokerURL, record: Record, spawn: Callable[..., WorkerProcess]) -> Any:
    """12 tasks of 1.5 s, a worker with concurrency 4 (prefetch 16) running 4 of them, then SIGTERM."""
    published = publish(app, [{"seconds": 1.5}] * 12)
    worker = spawn(vhost.to_url(), "-c", "4")
    wait_until(lambda: sum(record.starts().values()) == 4, 20, "4 tasks to start", worker)
    running = set(record.starts())
    worker.signal(signal.SIGTERM)
    return published, running, worker, time.monotonic()


def test_warm_shutdown_finishes_running_tasks_once_and_the_rest_run_once_on_the_next_worker(
    app: App, vhost: BrokerURL, record: Record, spawn: Callable[..., WorkerProcess]
) -> None:
    # Given a worker running 4 slow tasks, with 8 more prefetched, sent SIGTERM
    published, running, worker, _ = _warm_shutdown(app, vhost, record, spawn)

    # When it has shut down, and a second worker drains the queue
    code = worker.wait(15)
    after_first = record.dones()
    second = spawn(vhost.to_url(), "-c", "4", "--burst")
    wait_until(all_completed(published, record), 30, "every task to complete", second)
    second_code = second.finish()

    # Then the running tasks completed once on the first worker, the others once on the second, none twice
    lost, duplicated = report("warm shutdown", published, record)
    assert code == 0, worker.tail()
    assert set(after_first) == running and all(n == 1 for n in after_first.values()), worker.tail()
    assert not lost and not duplicated, f"lost {lost}, duplicated {duplicated}\n{worker.tail()}\n{second.tail()}"
    assert all(n == 1 for n in record.starts().values()), record.starts()
    assert second_code == 0, second.tail()


def test_warm_shutdown_hands_unstarted_prefetched_tasks_back_to_the_queue_at_once(
    app: App, vhost: BrokerURL, record: Record, spawn: Callable[..., WorkerProcess]
) -> None:
    # Given a worker running 4 tasks of 1.5 s with 8 more prefetched, sent SIGTERM
    _, _, worker, signalled = _warm_shutdown(app, vhost, record, spawn)

    # When a moment has passed, well before any running task can end
    time.sleep(0.6)
    ready = ready_count(vhost.to_url())
    elapsed = time.monotonic() - signalled

    # Then the 8 unstarted tasks are back in the queue, ready for another worker
    assert record.dones().total() == 0 and elapsed < 1.2, "a running task ended already: the test proves nothing"
    assert ready == 8, f"{ready} of 8 unstarted tasks back in the queue {elapsed:.2f} s after SIGTERM"
    assert worker.wait(15) == 0


def test_worker_reconnects_after_the_broker_closes_its_connection_and_every_task_completes(
    app: App, vhost: BrokerURL, mgmt: ManagementClient, record: Record, spawn: Callable[..., WorkerProcess]
) -> None:
    # Given a worker whose connection the management API shows, and 600 tasks flowing through it (~5 s of work)
    worker = spawn(vhost.to_url(), "-c", "4", "--processes", "1")
    connections = worker_connections(mgmt, vhost, worker)
    published = publish(app, [{"seconds": 0.03}] * 600)
    wait_until(lambda: len(record.dones()) >= 20, 20, "20 tasks to complete", worker)

    # When the broker closes the worker's connection (found by the name the worker gives it)
    [closed] = connections()
    mgmt.close_connection(closed["name"], reason="test: connection closed by the broker")
    completed_at_close = len(record.dones())

    # Then the worker connects again under the same name, consumes again and completes every task
    wait_until(lambda: [c["name"] for c in connections()] not in ([], [closed["name"]]), 15,
               "the worker's new connection in the API", worker)  # fmt: skip
    wait_until(all_completed(published, record), 40, "every task to complete", worker)
    code = worker.finish()
    lost, _ = report(f"connection closed after {completed_at_close} completed tasks", published, record)
    assert completed_at_close < len(published), "the batch ended before the close: the test proves nothing"
    assert not lost
    assert code == 0, worker.tail()
    assert ready_count(vhost.to_url()) == 0


def test_worker_consumes_a_queue_again_after_it_is_deleted_and_declared_again(
    app: App, vhost: BrokerURL, record: Record, spawn: Callable[..., WorkerProcess]
) -> None:
    # Given a worker consuming the queue, which has run a task
    worker = spawn(vhost.to_url(), "-c", "2")
    first = publish(app, [{"seconds": 0}])
    wait_until(all_completed(first, record), 20, "the first task", worker)

    # When the queue is deleted (the broker cancels the worker's consumer), then declared again by the topology
    connection = pika.BlockingConnection(pika.URLParameters(vhost.to_url()))
    try:
        connection.channel().queue_delete(QUEUE)
    finally:
        connection.close()
    time.sleep(0.3)
    app.provision()
    later = publish(app, [{"seconds": 0}] * 3)

    # Then the worker consumes the queue again and runs the tasks sent after it came back, without a restart
    wait_until(all_completed(later, record), 20, "the tasks sent after the queue came back", worker)
    code = worker.finish()
    assert code == 0, worker.tail()
    assert f"queue '{QUEUE}' is gone" in worker.tail() and f"queue '{QUEUE}' is back" in worker.tail()


def test_unstarted_prefetched_tasks_of_a_lost_connection_run_only_once(
    app: App, vhost: BrokerURL, mgmt: ManagementClient, record: Record, spawn: Callable[..., WorkerProcess]
) -> None:
    # Given a worker with concurrency 2 running tasks of 0.3 s, with 6 more prefetched (prefetch 8)
    worker = spawn(vhost.to_url(), "-c", "2", "--prefetch", "8", "--processes", "1")
    connections = worker_connections(mgmt, vhost, worker)
    published = publish(app, [{"seconds": 0.3}] * 24)
    wait_until(lambda: len(record.dones()) >= 2, 15, "2 tasks to complete", worker)

    # When the broker closes the worker's connection
    mgmt.close_connection(connections()[0]["name"], reason="test: connection closed by the broker")
    # (What had started once the worker saw the cut: before that, it may still start a prefetched one.)
    wait_until(lambda: "connection to the broker lost" in worker.tail(), 15, "the worker to see the cut", worker)
    started_by_the_cut = set(record.starts())
    wait_until(all_completed(published, record), 30, "every task to complete", worker)
    worker.finish()

    # Then only tasks that had started by then ran twice (running, or done with their ack not sent yet); the
    # unstarted prefetched ones ran once
    _, duplicated = report("connection closed, concurrency 2, prefetch 8", published, record)
    assert set(duplicated) <= started_by_the_cut, f"unstarted tasks ran twice: {set(duplicated) - started_by_the_cut}"
    assert len(duplicated) <= 8, f"{len(duplicated)} tasks ran twice"


#: A worker's own lines about its connections (not task progress, not the banner): what a cut may cost in logs.
def connection_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if line.startswith("[") and "faults.work[" not in line
            and "ready: consuming" not in line]  # fmt: skip


def children_of(pid: int) -> list[int]:
    """The live child processes of *pid* (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


@pytest.mark.timeout(180)
def test_sigkilled_consuming_processes_are_replaced_and_nothing_is_lost_nor_an_innocent_dead_lettered(
    tmp_path: Path, app: App, vhost: BrokerURL, record: Record, spawn: Callable[..., WorkerProcess]
) -> None:
    # Given `worker --processes 2` working through 300 tasks of 20 ms
    worker = spawn(vhost.to_url(), "--processes", "2", "-c", "4")
    published = publish(app, [{"seconds": 0.02}] * 300)

    # When one of its consuming processes is killed with SIGKILL, 5 times, each once tasks are completing again
    kills = 0
    for _ in range(5):
        done_before = len(record.dones())
        wait_until(lambda d=done_before: len(record.dones()) >= d + 10, 30, "10 more tasks to complete", worker)
        wait_until(lambda: len(children_of(worker.process.pid)) == 2, 30, "two consuming processes", worker)
        os.kill(children_of(worker.process.pid)[0], signal.SIGKILL)  # a child of the worker we started
        kills += 1
    wait_until(all_completed(published, record), 90, "every task to complete", worker)

    # Then nothing was lost, nothing is in the DLQ, the parent replaced each process and still runs
    lost, duplicated = report(f"--processes 2, a consuming process SIGKILLed {kills} times", published, record)
    assert not lost, lost
    assert len(duplicated) <= 64 * kills, duplicated
    assert dlq_depth(vhost.to_url()) == 0, dlq_rows(tmp_path, vhost.to_url())
    log = worker.tail(100_000)
    replaced = [line for line in log.splitlines() if "] worker process " in line and "killed by signal SIGKILL" in line]
    assert len(replaced) == kills and "Traceback" not in log, log[-5000:]
    assert worker.process.poll() is None
    assert worker.finish() == 0, worker.tail()


@pytest.mark.timeout(180)
def test_twenty_connection_cuts_lose_nothing_and_log_at_most_three_lines_each_without_a_traceback(
    app: App, vhost: BrokerURL, record: Record, spawn: Callable[..., WorkerProcess]
) -> None:
    # Given a worker that reaches the broker through a TCP proxy, and 400 tasks of 20 ms
    url = BrokerURL.parse(vhost.to_url())
    with tcp_proxy(url.port) as proxy:
        proxied = vhost.to_url().replace(f":{url.port}/", f":{proxy.port}/")
        worker = spawn(proxied, "-c", "4", "--processes", "1")
        wait_until(lambda: "ready: consuming" in worker.tail(), 20, "the worker to consume", worker)
        published = publish(app, [{"seconds": 0.02}] * 400)

        # When every connection through the proxy is cut, 20 times, each once the worker consumes again
        for cut in range(1, 21):
            done_before = len(record.dones())
            wait_until(lambda d=done_before: len(record.dones()) > d or set(published) <= set(record.dones()), 20,
                       "a task to complete between cuts", worker)  # fmt: skip
            proxy.cut()
            wait_until(lambda c=cut: worker.tail(100_000).count("consuming faults again") >= c, 30,
                       f"the worker to consume again after cut {cut}", worker)  # fmt: skip
        wait_until(all_completed(published, record), 60, "every task to complete", worker)
        log = worker.tail(100_000)
        code = worker.finish()

    # Then nothing was lost, and the worker said at most 3 lines per cut, none of them a traceback
    lost, duplicated = report("20 connection cuts", published, record)
    lines = connection_lines(log)
    print(f"20 cuts: {len(lines)} connection lines, e.g.\n" + "\n".join(lines[:3]))
    assert not lost, lost
    assert len(duplicated) <= 4 * 20, duplicated
    assert "Traceback" not in log, log[-5000:]
    assert len(lines) <= 3 * 20, "\n".join(lines)
    assert code == 0, worker.tail()


# --- tasks that kill their worker process: only the crasher is charged ---------------------------------------
# A task that SIGKILLs its process, os._exit()s or segfaults, in every pool, with and without a supervisor: it
# reaches its DLQ as worker-lost after at most max_redeliveries + 1 runs, and every innocent runs.


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
    # Given a crash journal directory that cannot be created: every consuming process dies before it consumes
    worker = spawn(vhost.to_url(), "--processes", "2", journals="/dev/null/journals")

    # When the parent has restarted them a few times
    code = worker.wait(60)

    # Then it exits 1, saying why once per death and that it gave up
    log = worker.tail(200)
    assert code == 1, log
    assert "before it consumed anything" in log and "keep dying at start" in log, log
    assert "cannot keep the worker's crash journal in /dev/null/journals" in log and "Traceback" not in log, log


@pytest.mark.timeout(150)
@pytest.mark.parametrize("pool", ["processes", "threads"])
def test_crashing_tasks_among_good_ones_reach_the_dlq_as_worker_lost_in_every_pool(
    pool: str, tmp_path: Path, app: App, vhost: BrokerURL, record: Record, spawn: Callable[..., WorkerProcess]
) -> None:
    # Given a segfault, an os._exit(1) and a SIGKILL among 60 good tasks, max_redeliveries 1
    good = publish(app, [{"seconds": 0.01}] * 20)
    crashers = publish_crashers(app, ["segv", "exit", "sigkill"])
    good += publish(app, [{"seconds": 0.01}] * 40)

    # When one worker runs them, in a pool of child processes, or in threads under a supervisor loop
    # (One process: a supervisor loop restarts it; with more, the worker's parent would, as tested above.)
    options = ("--pool", pool, "--processes", "1", "-c", "2", "--max-redeliveries", "1")
    workers = [spawn(vhost.to_url(), *options)]
    deadline = time.monotonic() + 90
    while not (set(good) <= set(record.dones()) and dlq_depth(vhost.to_url()) == 3):
        assert time.monotonic() < deadline, "\n".join(w.tail() for w in workers)
        if workers[-1].exited(0.1) is not None:
            assert pool == "threads", f"the worker died\n{workers[-1].tail()}"
            workers.append(spawn(vhost.to_url(), *options))

    # Then every good task ran, each crasher ran at most twice and is in the DLQ as worker-lost, no innocent is there
    lost, duplicated = report(f"pool {pool}: 3 crashers among 60 good", good, record)
    assert not lost and len(duplicated) <= 8 * 6, duplicated
    assert_only_crashers_dead_lettered(dlq_rows(tmp_path, vhost.to_url()), crashers, 2, record)
    # (A crasher charged as it waited for a thread, when another one crashed the process, started fewer times.)
    if pool == "processes":
        assert len(workers) == 1 and workers[0].process.poll() is None
        assert "child process" in workers[0].tail(300)
    else:
        # Each crasher crashed the worker at most twice (two runs); one crash may charge two co-running crashers.
        assert 3 <= len(workers) - 1 <= 6, f"{len(workers) - 1} restarts for 3 crashers allowed 2 runs each"
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
    options = ("--processes", "1", "--max-redeliveries", "2")
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


# --- private node: broker restart, consumer timeout -----------------------------------------------------------

#: consumer_timeout is global on RabbitMQ 3.10 and can only be set on a broker of our own. A channel checks it on
#: its tick, every 60 s by default: tick every second so that the timeout fires at ~5-6 s.
NODE_CONFIG = {"consumer_timeout": 5000}
NODE_ADVANCED = "[{rabbit, [{channel_tick_interval, 1000}]}].\n"


@pytest.fixture(scope="module")
def node() -> Iterator[BrokerNode]:
    yield from private_node(NODE_CONFIG, NODE_ADVANCED)


@pytest.fixture
def node_app(node: BrokerNode) -> Iterator[App]:
    """The app on the private node (default vhost), its queue new and empty."""
    connection = pika.BlockingConnection(pika.URLParameters(node.url))
    try:
        connection.channel().queue_delete(QUEUE)
    except pika.exceptions.ChannelClosedByBroker:  # 404: no such queue yet
        pass
    finally:
        connection.close()
    application = make_app(node.url, NO_MANAGEMENT)
    application.provision()
    yield application
    application.close()


@pytest.mark.timeout(120)
def test_batch_survives_a_broker_restart_in_the_middle_and_every_task_completes(
    node: BrokerNode, node_app: App, record: Record, spawn: Callable[..., WorkerProcess]
) -> None:
    # Given 1,000 tasks (durable queue, persistent messages) and a worker working through them
    published = publish(node_app, [{"seconds": 0.02}] * 1000)
    node_app.close()
    worker = spawn(node.url, "-c", "4", "--burst", management=NO_MANAGEMENT)
    wait_until(lambda: len(record.dones()) >= 200, 30, "200 tasks to complete", worker)

    # When the broker node is stopped and started again on the same data directory
    node.stop()
    completed_while_up = len(record.dones())
    node.start()

    # Then the worker reconnects and completes every task
    wait_until(all_completed(published, record), 60, "every task to complete", worker)
    code = worker.finish()
    lost, _ = report(f"broker restarted after {completed_while_up} completed tasks", published, record)
    assert completed_while_up < len(published), "the batch ended before the restart: the test proves nothing"
    assert not lost
    # And the restart cost a few clear lines, none of them a traceback
    lines = connection_lines(worker.tail(100_000))
    print("broker restart, the worker said:\n" + "\n".join(lines))
    assert "Traceback" not in worker.tail(100_000) and len(lines) <= 8, "\n".join(lines)
    assert code == 0, worker.tail()
    assert ready_count(node.url) == 0


@pytest.mark.faults_heavy
@pytest.mark.timeout(180)
def test_frozen_broker_is_noticed_within_30_s_logged_once_and_the_worker_recovers_when_it_thaws(
    node: BrokerNode, node_app: App, record: Record, spawn: Callable[..., WorkerProcess]
) -> None:
    # Given a worker with default settings consuming from the private node
    node_app.close()
    worker = spawn(node.url, "--processes", "1", management=NO_MANAGEMENT)
    wait_until(lambda: "ready: consuming" in worker.tail(), 30, "the worker to consume", worker)

    # When the node's VM is stopped (SIGSTOP: its sockets stay open, nothing answers)
    node.freeze()
    frozen_at = time.monotonic()
    try:
        wait_until(lambda: "the broker stopped answering" in worker.tail(), 40, "the stall to be noticed", worker)
        noticed = time.monotonic() - frozen_at
        wait_until(lambda: "still cannot reach the broker" in worker.tail(), 60, "a periodic line", worker)
    finally:
        node.thaw()

    # Then it was noticed within 30 s, logged once, and once the node runs again the worker consumes and runs tasks
    wait_until(lambda: "consuming faults again" in worker.tail(), 90, "the worker to consume again", worker)
    published = publish(node_app, [{"seconds": 0.0}] * 20)
    wait_until(all_completed(published, record), 30, "the tasks sent after the thaw", worker)
    log = worker.tail(10_000)
    print(f"\nfrozen broker noticed after {noticed:.1f} s; lines:\n" + "\n".join(connection_lines(log)))
    assert noticed <= 30, f"noticed after {noticed:.1f} s"
    assert log.count("the broker stopped answering") == 1 and "Traceback" not in log, log
    assert len(connection_lines(log)) <= 6, "\n".join(connection_lines(log))
    assert worker.finish() == 0


@pytest.mark.timeout(90)
def test_task_longer_than_the_consumer_timeout_runs_again_after_the_broker_closes_the_channel(
    node: BrokerNode, node_app: App, record: Record, spawn: Callable[..., WorkerProcess]
) -> None:
    # Given a task that runs 8 s on its first attempt (then at once), and quick ones, under consumer_timeout 5 s
    slow = publish(node_app, [{"seconds": 8.0, "slow_first_run_only": True}])[0]
    published = [slow, *publish(node_app, [{"seconds": 0.01}] * 5)]
    worker = spawn(node.url, "-c", "2", "--burst", management=NO_MANAGEMENT)
    wait_until(lambda: record.starts()[slow] == 1, 20, "the slow task to start", worker)

    # When the broker closes the worker's channel with PRECONDITION_FAILED (requeueing the message) as it runs
    wait_until(lambda: record.starts()[slow] == 2, 20, "the slow task to run again", worker)

    # Then the worker consumed again on a new channel: the task ran twice and completed twice (at least once)
    wait_until(lambda: record.dones()[slow] == 2, 20, "the first run to end too", worker)
    code = worker.finish()
    lost, _ = report("consumer timeout", published, record)
    assert "timed out waiting for delivery acknowledgement" in node.log(), node.log_tail()
    assert not lost
    assert code == 0, worker.tail()
    assert ready_count(node.url) == 0
