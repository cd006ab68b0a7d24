"""Shared steps of the worker tests: an app in the test's vhost, a worker run in-process or as the CLI runs it.

In-process runs (:func:`run_worker`) give fine-grained checks (what the task saw, which hooks ran); subprocess
runs (:class:`WorkerProcess`, :func:`worker_burst`) are what a user does: ``amqptasks worker -A tasks:app -Q ...``
in a project directory, with ``AMQPTASKS_BROKER_URL`` pointing at the test's vhost.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import textwrap
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika

from amqptasks import App
from amqptasks.broker import BrokerURL, ManagementClient
from amqptasks.config import load_config_text
from amqptasks.constants import ENV_BROKER_URL, ENV_CONFIG
from amqptasks.worker.consumer import Worker, WorkerSettings
from tests.cli_helpers import Result, console_script, run, write

#: One topic exchange, queues with a dead-letter queue each, and the delay tiers (retries, countdowns).
YAML = """
delays: {enabled: true}
topology:
  provision: true
  exchanges: [{name: tasks, type: topic}]
  queues:
    - {name: work, dead_letter: auto, bindings: [{exchange: tasks, routing_key: "work.#"}]}
    - {name: other, dead_letter: auto, bindings: [{exchange: tasks, routing_key: "other.#"}]}
routes:
  - {task: "other.*", exchange: tasks, routing_key: other.run}
  - {task: "*", exchange: tasks, routing_key: work.run}
"""


def make_app(vhost: BrokerURL, yaml_text: str = YAML) -> App:
    """Given the YAML, an app on the test's vhost with its topology applied."""
    app = App(config=load_config_text(textwrap.dedent(yaml_text), "app.yaml", broker_url=vhost.to_url()))
    app.provision()
    return app


# --- in-process -------------------------------------------------------------------------------------------


def run_worker(
    app: App,
    queues: Sequence[str] = ("work",),
    *,
    until: Callable[[], bool] | None = None,
    timeout: float = 15.0,
    created: Callable[[Worker], Any] | None = None,
    **settings: Any,
) -> Worker:
    """Run a worker in this process until *until()* holds (checked every 20 ms), or in burst mode without it.

    *created(worker)*, if given, is called before the worker starts. Fails the test when the worker is
    still running after *timeout* seconds.
    """
    worker = Worker(app, WorkerSettings(queues=list(queues), burst=until is None, **settings))
    if created is not None:
        created(worker)

    async def main() -> None:
        running = asyncio.ensure_future(worker.run())
        try:
            deadline = time.monotonic() + timeout
            while not running.done():
                if until is not None and until():
                    worker.stop()
                if time.monotonic() > deadline:
                    worker.stop(cold=True)
                    await running
                    raise AssertionError(f"the worker was still running after {timeout} s")
                await asyncio.sleep(0.02)
            await running
        finally:
            await app.aclose()

    asyncio.run(main())
    return worker


# --- observing the broker ---------------------------------------------------------------------------------


def get_all(channel: Any, queue: str) -> list[tuple[Any, Any, Any]]:
    """Every message in *queue* (acked): (method, properties, decoded JSON body or raw bytes)."""
    found: list[tuple[Any, Any, Any]] = []
    while True:
        method, props, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return found
        try:
            found.append((method, props, json.loads(body)))
        except ValueError:
            found.append((method, props, body))


def ready(channel: Any, queue: str) -> int:
    """Messages ready in *queue* right now (AMQP passive declare: no statistics lag)."""
    return int(channel.queue_declare(queue, passive=True).method.message_count)


def death(props: Any) -> Mapping[str, Any]:
    """The newest x-death entry RabbitMQ added when it dead-lettered the message."""
    deaths = (props.headers or {}).get("x-death") or []
    assert deaths, f"no x-death header: {props.headers}"
    return dict(deaths[0])


def queue_stats_when(
    mgmt: ManagementClient, vhost: BrokerURL, queue: str, ok: Callable[[Mapping[str, Any]], bool], timeout: float = 15
) -> Mapping[str, Any]:
    """The management API's view of *queue* once *ok* holds for it.

    Queue statistics are sampled every ``collect_statistics_interval`` (5 s by default), so a check must
    wait for a sample that reflects what it looks for (a counter that only grows, such as acks).
    """
    deadline = time.monotonic() + timeout
    last: Mapping[str, Any] = {}
    while time.monotonic() < deadline:
        last = mgmt.get_queue(vhost.vhost, queue) or {}
        if ok(last):
            return last
        time.sleep(0.2)
    raise AssertionError(f"queue {queue!r} statistics never matched; last seen: {dict(last)}")


def wait_until(condition: Callable[[], bool], timeout: float = 5.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def acks(stats: Mapping[str, Any]) -> int:
    return int(stats.get("message_stats", {}).get("ack", 0))


def publish_raw(
    channel: Any, routing_key: str, body: bytes | str, *, exchange: str = "", headers: Mapping[str, Any] | None = None,
    content_type: str = "application/json", correlation_id: str | None = None,
) -> None:  # fmt: skip
    """What a foreign (or broken) client might send, published as it is (confirmed)."""
    channel.confirm_delivery()
    data = body.encode() if isinstance(body, str) else body
    props = pika.BasicProperties(
        headers=dict(headers) if headers is not None else None, content_type=content_type,
        content_encoding="utf-8", correlation_id=correlation_id, delivery_mode=2,
    )  # fmt: skip
    channel.basic_publish(exchange, routing_key, data, props, mandatory=True)


def celery_headers(task: str, task_id: str, **extra: Any) -> dict[str, Any]:
    """The headers of a Celery protocol v2 message."""
    return {"lang": "py", "task": task, "id": task_id, "retries": 0, "root_id": task_id, **extra}


# --- as a user runs it --------------------------------------------------------------------------------------


@dataclass
class Project:
    """A directory with ``app.yaml`` and a ``tasks.py`` module defining ``app``, like a user's project."""

    path: Path
    vhost: BrokerURL

    @classmethod
    def create(cls, path: Path, vhost: BrokerURL, tasks_code: str, yaml_text: str = YAML) -> Project:
        write(path, "app.yaml", yaml_text)
        header = "from amqptasks import App\nfrom tests_record import record\n\napp = App.from_config('app.yaml')\n"
        (path / "tasks.py").write_text(header + textwrap.dedent(tasks_code), encoding="utf-8")
        (path / "tests_record.py").write_text(RECORDER, encoding="utf-8")
        return cls(path, vhost)

    @property
    def env(self) -> dict[str, str]:
        return {ENV_BROKER_URL: self.vhost.to_url()}

    def app(self) -> App:
        """The publishing side: the same YAML, no task functions (tasks are sent by name)."""
        return App(config=load_config_text((self.path / "app.yaml").read_text(), "app.yaml",
                                           broker_url=self.vhost.to_url()))  # fmt: skip

    def records(self) -> list[dict[str, Any]]:
        """What the tasks recorded, one dict per call, in call order."""
        path = self.path / "records.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


#: Imported by a project's tasks.py: lets a task tell the test what it saw (one JSON line per call).
RECORDER = """
import json, os, time, threading
_lock = threading.Lock()

def record(**fields):
    fields.setdefault("at", time.time())
    with _lock, open(os.path.join(os.path.dirname(__file__), "records.jsonl"), "a") as f:
        f.write(json.dumps(fields, default=str) + "\\n")
"""


def worker_burst(project: Project, *args: str) -> Result:
    """``amqptasks worker -A tasks:app --burst ARGS`` in the project; returns once it exits."""
    return run(["worker", "-A", "tasks:app", "--burst", *args], cwd=project.path, env=project.env)


class WorkerProcess:
    """A long-running ``amqptasks worker`` subprocess whose log the test can wait on."""

    def __init__(self, project: Project, *args: str) -> None:
        environment = {k: v for k, v in os.environ.items() if k not in (ENV_BROKER_URL, ENV_CONFIG)}
        environment.update(project.env)
        self.log_path = project.path / f"worker-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [console_script(), "worker", "-A", "tasks:app", *args],
            cwd=project.path, env=environment, stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def output(self) -> str:
        return self.log_path.read_text()

    def wait_for_log(self, text: str, timeout: float = 15.0, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while self.output.count(text) < count:
            if self.process.poll() is not None:
                raise AssertionError(f"the worker exited ({self.process.returncode}) before logging {text!r}:\n"
                                     f"{self.output}")  # fmt: skip
            if time.monotonic() > deadline:
                raise AssertionError(f"the worker did not log {text!r} within {timeout} s:\n{self.output}")
            time.sleep(0.02)

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 15.0) -> int:
        try:
            return self.process.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        self._log.close()


@contextmanager
def worker_process(project: Project, *args: str) -> Iterator[WorkerProcess]:
    """A worker subprocess, consuming once this yields; killed at the end if the test left it running."""
    worker = WorkerProcess(project, *args)
    try:
        worker.wait_for_log("ready: consuming")
        yield worker
    finally:
        worker.kill()


def rss_kib(pid: int) -> int:
    """Resident memory of a process (VmRSS of /proc/PID/status), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for process {pid}")
