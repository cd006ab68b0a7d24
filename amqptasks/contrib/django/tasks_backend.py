"""A backend for Django's tasks framework (``django.tasks``; the ``django-tasks`` backport before Django 6).

::

    TASKS = {"default": {"BACKEND": "amqptasks.contrib.django.tasks_backend.AmqptasksBackend"}}

Each ``@task`` function becomes an amqptasks task named by its module path, so the YAML's ``routes:`` and
``tasks:`` sections apply to it and ``amqptasks worker`` runs it. ``queue_name`` other than ``"default"`` is the
queue to publish to (``"default"`` leaves the routing to the YAML); a priority above 0 is the AMQP priority
(RabbitMQ caps it at the queue's ``max_priority``; 0 and below send none); ``run_after`` waits on the broker like
``eta``. Results are read from the YAML's ``results:`` backend (``redis://`` reads them from any process;
``rpc://`` only in the process that enqueued).
"""

from __future__ import annotations

import inspect
import uuid
from datetime import datetime
from typing import Any

from django.utils import timezone
from django.utils.module_loading import import_string

try:  # Django 6+
    from django.tasks import DEFAULT_TASK_QUEUE_NAME, TaskContext, TaskResult, TaskResultStatus
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import Task as DjangoTaskSpec
    from django.tasks.base import TaskError
    from django.tasks.exceptions import TaskResultDoesNotExist
except ImportError:  # the backport
    from django_tasks import DEFAULT_TASK_QUEUE_NAME, TaskContext, TaskResult, TaskResultStatus
    from django_tasks.backends.base import BaseTaskBackend
    from django_tasks.base import Task as DjangoTaskSpec
    from django_tasks.base import TaskError
    from django_tasks.exceptions import TaskResultDoesNotExist

from amqptasks.contrib.django.app import get_app
from amqptasks.results.states import EXPIRED, READY_STATES, REJECTED, REVOKED, STARTED, SUCCESS
from amqptasks.tasks.task import Task

_STATE_ERRORS = {
    REVOKED: "amqptasks.errors.TaskRevoked",
    EXPIRED: "amqptasks.errors.TaskExpired",
    REJECTED: "amqptasks.errors.Reject",
}
_STATUS = {STARTED: TaskResultStatus.RUNNING, SUCCESS: TaskResultStatus.SUCCESSFUL}


class AmqptasksBackend(BaseTaskBackend):  # type: ignore[misc]  # Django ships no type information
    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        if "QUEUES" not in params:
            self.queues: set[str] = (
                set()
            )  # any queue: the YAML's topology decides, and publishing refuses the unroutable

    def validate_task(self, task: Any) -> None:
        super().validate_task(task)
        amqp_task(task)  # registered when the @task decorator runs, so a worker that imports tasks.py knows it

    def enqueue(self, task: Any, args: Any, kwargs: Any) -> Any:
        self.validate_task(task)
        options: dict[str, Any] = {"task_id": f"{task.module_path}:{uuid.uuid4()}"}
        if task.queue_name != DEFAULT_TASK_QUEUE_NAME:
            options["queue"] = task.queue_name
        if task.priority > 0:
            options["priority"] = task.priority
        if task.run_after is not None:
            options["eta"] = task.run_after
        sent = amqp_task(task).apply_async(tuple(args), dict(kwargs), **options)
        return _result(task, sent.id, TaskResultStatus.READY, self.alias, args, kwargs, enqueued_at=timezone.now())

    def get_result(self, result_id: str) -> Any:
        module_path, _, _ = result_id.rpartition(":")
        try:
            task = import_string(module_path)
        except ImportError:
            raise TaskResultDoesNotExist(result_id) from None
        if not isinstance(task, DjangoTaskSpec):
            raise TaskResultDoesNotExist(result_id)
        backend = get_app().result_backend
        if backend is None:
            raise NotImplementedError("no result backend: set results.backend in the YAML (redis:// or rpc://)")
        meta = backend.peek(result_id)
        if meta is None:
            return _result(task, result_id, TaskResultStatus.READY, self.alias, [], {})
        state = str(meta.get("status"))
        done = _when(meta.get("date_done")) if state in READY_STATES else None
        status = _STATUS.get(state, TaskResultStatus.FAILED if state in READY_STATES else TaskResultStatus.READY)
        result = _result(task, result_id, status, self.alias, [], {}, finished_at=done)
        if status == TaskResultStatus.SUCCESSFUL:
            object.__setattr__(result, "_return_value", meta.get("result"))
        elif status == TaskResultStatus.FAILED:
            result.errors.append(_error(meta, state))
        return result


def amqp_task(spec: Any) -> Task[Any, Any]:
    """The amqptasks task that runs the Django task *spec* (registered on first use, named by module path)."""
    app = get_app()
    name = spec.module_path
    registered = app.tasks.get(name)
    if registered is not None:
        return registered
    run = _with_context(name, spec.func) if spec.takes_context else spec.func
    register: Any = app.task(name=name, bind=True) if spec.takes_context else app.task(name=name)
    task: Task[Any, Any] = register(run)
    return task


def _with_context(name: str, func: Any) -> Any:
    """*func* called with Django's ``TaskContext`` first: a bound task whose ``self.request`` builds it."""
    parameters = list(inspect.signature(func).parameters.values())

    def context(self: Task[Any, Any], args: Any, kwargs: Any) -> Any:
        request = self.request
        spec = import_string(name)
        current = _result(spec, request.id, TaskResultStatus.RUNNING, spec.backend, list(args), dict(kwargs))
        current.worker_ids.extend([request.hostname] * (request.retries + 1))  # attempts = len(worker_ids)
        return TaskContext(task_result=current)

    if inspect.iscoroutinefunction(func):

        async def run(self: Task[Any, Any], *args: Any, **kwargs: Any) -> Any:
            return await func(context(self, args, kwargs), *args, **kwargs)

    else:

        def run(self: Task[Any, Any], *args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
            return func(context(self, args, kwargs), *args, **kwargs)

    # self (bind=True) in place of the context: argument checks see the function's own parameters.
    bound_self = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)
    setattr(run, "__signature__", inspect.Signature([bound_self, *parameters[1:]]))  # noqa: B010
    run.__name__ = func.__name__
    run.__qualname__ = func.__qualname__
    run.__module__ = func.__module__
    return run


def _result(
    task: Any,
    result_id: str,
    status: Any,
    alias: str,
    args: Any,
    kwargs: Any,
    *,
    enqueued_at: datetime | None = None,
    finished_at: datetime | None = None,
) -> Any:
    return TaskResult(
        task=task,
        id=result_id,
        status=status,
        enqueued_at=enqueued_at,
        started_at=None,
        last_attempted_at=None,
        finished_at=finished_at,
        args=list(args),
        kwargs=dict(kwargs),
        backend=alias,
        errors=[],
        worker_ids=[],
    )


def _error(meta: dict[str, Any], state: str) -> Any:
    payload = meta.get("result")
    path = _STATE_ERRORS.get(state, "builtins.Exception")
    if isinstance(payload, dict):
        kind = payload.get("exc_type") or payload.get("type")
        module = payload.get("exc_module") or "builtins"
        if isinstance(kind, str) and kind:
            path = kind if "." in kind else f"{module}.{kind}"
    return TaskError(exception_class_path=path, traceback=str(meta.get("traceback") or ""))


def _when(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return None
