"""Real peers for the Celery interop tests: a ``celery worker`` subprocess (tests/celery_interop_app.py), our
``amqptasks worker`` subprocess in a project directory, and a vhost that lives as long as a test module.

Starting a worker costs seconds of the machine's two cores, so the interop modules start each peer once
(module-scoped fixtures) and give every test its own task ids to count by.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from amqptasks.broker import BrokerURL
from tests.celery_interop_app import MAX_PRIORITY, PLAIN_QUEUES, QUEUE
from tests.conftest import _fresh_vhost
from tests.worker_helpers import Project, WorkerProcess

REPO = Path(__file__).resolve().parents[1]
READY_TIMEOUT = 30.0
RECORD_TIMEOUT = 30.0

#: Our side's topology: the same queues, declared as tests/celery_interop_app.py declares them.
YAML = (
    "topology:\n  provision: true\n  queues:\n"
    + f"    - {{name: {QUEUE}, max_priority: {MAX_PRIORITY}}}\n"
    + "".join(f"    - {{name: {name}}}\n" for name in PLAIN_QUEUES)
)

#: Our side's tasks: the names tests/celery_interop_app.py defines, so either kind of worker runs either's messages.
TASKS = """
import time
from amqptasks.errors import SoftTimeLimitExceeded

@app.task(name="math.add")
def add(x, y):
    return x + y

@app.task(name="math.tsum")
def tsum(numbers):
    return sum(numbers)

@app.task(name="interop.echo")
def echo(value):
    return value

@app.task(name="interop.fail")
def fail(message):
    raise ValueError(message)

@app.task(name="interop.sleep")
def sleep(seconds):
    time.sleep(seconds)
    return seconds

@app.task(name="interop.soft")
def soft(seconds):
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            time.sleep(0.01)  # short sleeps: the soft limit is raised between them
    except SoftTimeLimitExceeded:
        return "soft limit reached"
    return "ran to the end"

@app.task(name="interop.flaky", bind=True)
def flaky(self):
    if self.request.retries == 0:
        self.retry(countdown=0, exc=RuntimeError("first try fails"))
    return "second try"

@app.task(name="interop.refuse")
def refuse():
    from amqptasks.errors import Reject
    raise Reject("refused by the task")

@app.task(name="interop.record", bind=True)
def record_task(self, *args, **kwargs):
    record(task=self.name, id=self.request.id, args=list(args), kwargs=kwargs, worker="amqptasks")
    return f"recorded {self.request.id}"
"""


#: A fresh vhost for one test module, as a context manager (the same vhost set-up as conftest's fixtures).
module_vhost = contextmanager(_fresh_vhost)


def our_project(path: Path, vhost: BrokerURL, backend: str | None) -> Project:
    path.mkdir(parents=True, exist_ok=True)
    results = f"results: {{backend: '{backend}', result_expires: 3600}}\n" if backend else ""
    return Project.create(path, vhost, TASKS, results + YAML)


@contextmanager
def our_worker(project: Project, *args: str) -> Iterator[WorkerProcess]:
    """``amqptasks worker -A tasks:app ARGS`` in *project*, consuming once this yields; killed afterwards.

    One consuming process unless ARGS say otherwise, so that ``-n`` names exactly one node (``--processes N``
    names them ``name-1@host``...)."""
    if "--processes" not in args:
        args = (*args, "--processes", "1")
    worker = WorkerProcess(project, *args)
    try:
        worker.wait_for_log("ready: consuming", timeout=READY_TIMEOUT)
        yield worker
    finally:
        worker.kill()


class CeleryWorker:
    """``celery -A tests.celery_interop_app worker`` in a subprocess; what ``interop.record`` ran is in ``records``."""

    def __init__(self, directory: Path, vhost: BrokerURL, *, backend: str | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.records = directory / "records.jsonl"
        self.log = directory / f"celery-{time.monotonic_ns()}.log"
        self.vhost, self.backend = vhost, backend
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, queues: Sequence[str], *, hostname: str, pool: str = "solo", extra: Sequence[str] = ()) -> None:
        env = {**os.environ, "INTEROP_BROKER_URL": self.vhost.to_url(), "INTEROP_RECORD_FILE": str(self.records)}
        if self.backend:
            env["INTEROP_RESULT_BACKEND"] = self.backend
        command = [sys.executable, "-m", "celery", "-A", "tests.celery_interop_app", "worker", "-Q", ",".join(queues)]
        command += ["--pool", pool, "--concurrency", "1", "-l", "info", "-n", hostname]
        command += ["--without-gossip", "--without-mingle", *extra]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + READY_TIMEOUT
        while " ready." not in self.output():
            if self.process.poll() is not None:
                raise AssertionError(f"the Celery worker exited with {self.process.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the Celery worker was not ready within {READY_TIMEOUT} s:\n{self.tail()}")
            time.sleep(0.05)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self) -> str:
        return self.output()[-3000:]

    def runs(self) -> list[dict[str, Any]]:
        lines = self.records.read_text().splitlines() if self.records.exists() else []
        return [json.loads(line) for line in lines if line.strip()]

    def ran(self, ids: set[str]) -> dict[str, dict[str, Any]]:
        """The runs of *ids* (by id), once all of them ran (waiting up to RECORD_TIMEOUT seconds)."""
        deadline = time.monotonic() + RECORD_TIMEOUT
        while True:
            found = {run["id"]: run for run in self.runs() if run["id"] in ids}
            if len(found) == len(ids):
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"the Celery worker ran {len(found)} of {len(ids)} tasks:\n{self.tail()}")
            time.sleep(0.05)

    def ran_where(self, condition: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        """The first run for which *condition* holds, waiting up to RECORD_TIMEOUT seconds for it."""
        deadline = time.monotonic() + RECORD_TIMEOUT
        while True:
            found = [run for run in self.runs() if condition(run)]
            if found:
                return found[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"the Celery worker never ran {what}:\n{self.tail()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Warm shutdown (SIGTERM); SIGKILL if it does not exit in 10 s."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


@contextmanager
def celery_worker(
    directory: Path, vhost: BrokerURL, queues: Sequence[str], *, hostname: str, backend: str | None = None,
    pool: str = "solo", extra: Sequence[str] = (),
) -> Iterator[CeleryWorker]:  # fmt: skip
    worker = CeleryWorker(directory, vhost, backend=backend)
    try:
        worker.start(queues, hostname=hostname, pool=pool, extra=extra)
        yield worker
    finally:
        worker.stop()
