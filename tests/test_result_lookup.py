"""Results as Celery users look them up, with a real ``amqptasks worker`` and lookups from fresh processes:
``AsyncResult(id, app=app)``, ``app.AsyncResult(id)``, ``publish_many``'s results, rpc:// from elsewhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from amqptasks import App, AsyncResult
from amqptasks.broker import BrokerURL
from amqptasks.constants import ENV_BROKER_URL
from amqptasks.errors import ResultUnavailable
from tests.cli_helpers import write
from tests.worker_helpers import Project, WorkerProcess

pytestmark = pytest.mark.broker

YAML = """
topology:
  provision: true
  queues: [{name: work}]
routes: [{task: "*", queue: work}]
"""

TASKS = """
@app.task
def add(x, y):
    return x + y
"""

#: Run in a fresh interpreter in the project directory: look a result up by id and print what it shows.
LOOKUP = """
import json, sys
from amqptasks import App, AsyncResult
from amqptasks.errors import ResultUnavailable

app = App.from_config("app.yaml")
result = AsyncResult(sys.argv[1], app=app)
try:
    value = result.get(timeout=15)
except ResultUnavailable as exc:
    print(json.dumps({"unavailable": str(exc)}))
else:
    same = app.AsyncResult(sys.argv[1])
    print(json.dumps({"value": value, "state": same.state, "date_done": type(same.date_done).__name__}))
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, module_vhost: BrokerURL, redis_url: str) -> Project:
    yaml = YAML + f"results: {{backend: '{redis_url}', result_expires: 120}}\n"
    created = Project.create(Path(tmp_path_factory.mktemp("lookup")), module_vhost, TASKS, yaml)
    write(created.path, "lookup.py", LOOKUP)
    return created


@pytest.fixture(scope="module")
def app(project: Project) -> Iterator[App]:
    worker = WorkerProcess(project, "-Q", "work")
    publisher = project.app()
    try:
        worker.wait_for_log("ready: consuming")
        yield publisher
    finally:
        publisher.close()
        worker.kill()


def lookup(path: Path, vhost: BrokerURL, task_id: str) -> dict[str, Any]:
    env = {**os.environ, ENV_BROKER_URL: vhost.to_url()}
    done = subprocess.run([sys.executable, "lookup.py", task_id], cwd=path, env=env, capture_output=True,
                          text=True, timeout=30, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_a_fresh_process_reads_a_result_by_id_from_redis(app: App, project: Project) -> None:
    # Given a task published here and run by the worker
    task_id = app.send_task("tasks.add", (20, 22)).id
    # When another process, which published nothing, looks it up by id with AsyncResult(id, app=app)
    seen = lookup(project.path, project.vhost, task_id)
    # Then it gets the value, the state, and date_done as a datetime
    assert seen == {"value": 42, "state": "SUCCESS", "date_done": "datetime"}


def test_publish_many_results_are_bound_to_the_app_and_its_backend(app: App) -> None:
    results = app.publish_many([app.signature("tasks.add", (i, i)) for i in range(5)])
    assert [r.get(timeout=15) for r in results] == [0, 2, 4, 6, 8]
    first = results[0]
    assert first.app is app and first.state == "SUCCESS" and first.wait(timeout=1) == 0
    assert isinstance(first.date_done, datetime)
    assert app.AsyncResult(first.id).get(timeout=5) == 0
    # and revoke() reaches the running worker through the app
    assert {reply["ok"] for reply in first.revoke(timeout=2)} == {"revoked"}  # one reply per worker process


def test_rpc_lookup_from_a_process_that_published_nothing_says_why_at_once(
    tmp_path: Path, module_vhost: BrokerURL
) -> None:
    # Given rpc:// results and a process that did not publish the task
    write(tmp_path, "app.yaml", YAML + "results: {backend: 'rpc://'}\n")
    write(tmp_path, "lookup.py", LOOKUP)
    # When it waits for a result by id (up to 15 s)
    started = time.monotonic()
    seen = lookup(tmp_path, module_vhost, str(uuid.uuid4()))
    # Then it is told at once that the result can never arrive there, and why
    assert time.monotonic() - started < 10
    assert "rpc:// results go only to the process that published the task" in seen["unavailable"]


def test_rpc_results_of_publish_many_say_why_they_cannot_arrive(tmp_path: Path, module_vhost: BrokerURL) -> None:
    write(tmp_path, "app.yaml", YAML + "results: {backend: 'rpc://'}\n")
    with App(config=tmp_path / "app.yaml", broker_url=module_vhost.to_url()) as rpc_app:
        (result,) = rpc_app.publish_many([rpc_app.signature("tasks.add", (1, 1))])
        assert isinstance(result, AsyncResult) and result.app is rpc_app
        with pytest.raises(ResultUnavailable, match="publish_many"):
            result.get(timeout=15)
