"""Celery's task hooks on a custom base class, called by a real ``amqptasks worker`` process with Celery's
signatures (einfo carrying the formatted traceback); a hook that cannot be called so is refused at declaration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from amqptasks import App, Task
from tests.worker_helpers import Project, WorkerProcess, wait_until

pytestmark = pytest.mark.broker

YAML = """
delays: {enabled: true}
topology:
  provision: true
  queues: [{name: work, dead_letter: auto}]
routes: [{task: "*", queue: work}]
"""

TASKS = """
from amqptasks import Task


class Audited(Task):
    def on_success(self, retval, task_id, args, kwargs):
        record(hook="on_success", id=task_id, retval=retval, args=list(args), kwargs=kwargs)

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        record(hook="on_failure", id=task_id, exc=repr(exc), args=list(args), traceback=einfo.traceback,
               same=einfo.exception is exc, text=str(einfo) == einfo.traceback, type=einfo.type.__name__)

    def on_retry(self, exc, task_id, args, kwargs, einfo):
        record(hook="on_retry", id=task_id, exc=repr(exc), traceback=einfo.traceback)

    def after_return(self, status, retval, task_id, args, kwargs, einfo):
        record(hook="after_return", id=task_id, status=status, retval=repr(retval), einfo=einfo is not None)


@app.task(base=Audited, bind=True)
def flaky(self, x):
    if self.request.retries == 0:
        self.retry(exc=OSError("network blip"), countdown=0.1)
    return x * 2


@app.task(base=Audited)
def broken(key):
    return {}[key]
"""


@pytest.fixture
def project(tmp_path: Path, vhost: Any) -> Project:
    return Project.create(tmp_path, vhost, TASKS, YAML)


def test_base_class_hooks_get_celery_arguments_from_a_real_worker(project: Project) -> None:
    # Given a worker process running tasks with an auditing base class
    worker = WorkerProcess(project, "-Q", "work")
    try:
        worker.wait_for_log("ready: consuming")
        with project.app() as app:
            retried = app.send_task("tasks.flaky", (21,)).id
            failed = app.send_task("tasks.broken", ("missing",)).id
            wait_until(lambda: len(project.records()) >= 5, timeout=15, what="five hook calls")
    finally:
        worker.kill()
    hooks = {(r["hook"], r["id"]): r for r in project.records()}
    assert len(project.records()) == 5
    # Then the retried task: on_retry with the exception given to retry() and its traceback, then success
    assert hooks["on_retry", retried]["exc"] == "OSError('network blip')"
    assert "Retry" in hooks["on_retry", retried]["traceback"]
    assert hooks["on_success", retried]["retval"] == 42 and hooks["on_success", retried]["args"] == [21]
    assert hooks["after_return", retried]["status"] == "SUCCESS" and not hooks["after_return", retried]["einfo"]
    # And the failed one: on_failure with an einfo carrying the formatted traceback, as Celery's ExceptionInfo
    failure = hooks["on_failure", failed]
    assert failure["exc"] == "KeyError('missing')" and failure["args"] == ["missing"]
    assert failure["same"] and failure["text"] and failure["type"] == "KeyError"
    assert failure["traceback"].startswith("Traceback (most recent call last):")
    assert "return {}[key]" in failure["traceback"] and failure["traceback"].rstrip().endswith("KeyError: 'missing'")
    assert hooks["after_return", failed]["status"] == "FAILURE" and hooks["after_return", failed]["einfo"]


def test_a_hook_with_a_signature_the_worker_cannot_call_is_refused_when_the_task_is_declared() -> None:
    app = App()

    class OldStyle(Task[Any, Any]):
        def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any) -> None: ...

    with pytest.raises(TypeError) as refused:

        @app.task(base=OldStyle)
        def job() -> None: ...

    message = str(refused.value)
    assert "OldStyle.on_failure(self, exc, task_id, args, kwargs)" in message
    assert "on_failure(self, exc, task_id, args, kwargs, einfo)" in message
    assert "job" in message

    # A hook taking *args, or extra arguments with defaults, is callable and accepted
    class Flexible(Task[Any, Any]):
        def on_failure(self, *args: Any, extra: int = 0) -> None: ...

        def after_return(self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any, einfo: Any,
                         more: int = 1) -> None: ...  # fmt: skip

    app.task(base=Flexible)(lambda: None)
