"""Eager calls: ``Task.apply()`` runs a task here and now, in this thread, and returns an :class:`EagerResult`,
as Celery's ``Task.apply`` does.

The task sees ``self.request`` (``is_eager`` true, ``retries`` counting); the base class's ``on_success``,
``on_failure``, ``on_retry`` and ``after_return`` run. A retry -- ``self.retry()``, or an exception listed in
``autoretry_for`` -- runs the task again at once (a countdown is not waited for), until it succeeds or the retries
are used up, then ``FAILURE``. The exception is kept in the result (``get()`` raises it) unless ``throw=True``.
Nothing touches the broker, except what the task itself publishes.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from amqptasks.errors import Ignore, Reject, Retry
from amqptasks.message.ids import new_id
from amqptasks.message.protocol import TaskMessage
from amqptasks.results.states import EXCEPTION_STATES, FAILURE, REJECTED, SUCCESS
from amqptasks.tasks.einfo import ExceptionInfo
from amqptasks.tasks.retrying import should_retry
from amqptasks.worker import request as request_context
from amqptasks.worker.request import Request

if TYPE_CHECKING:
    from amqptasks.tasks.task import Task

__all__ = ["IGNORED", "EagerResult", "apply", "direct_request"]

#: Celery's state for a task that raised ``Ignore``.
IGNORED = "IGNORED"


class EagerResult:
    """The outcome of :meth:`Task.apply`: already there, never waited for (Celery's ``EagerResult``)."""

    def __init__(self, task_id: str, value: Any, state: str, traceback: str | None = None, name: str | None = None):
        self.id = self.task_id = task_id
        self._value = value
        self._state = state
        self._traceback = traceback
        self.name = name

    def __repr__(self) -> str:
        return f"<EagerResult: {self.id} {self._state}>"

    @property
    def state(self) -> str:
        return self._state

    status = state

    @property
    def result(self) -> Any:
        """The return value, or the exception the task raised."""
        return self._value

    info = result

    @property
    def traceback(self) -> str | None:
        return self._traceback

    def ready(self) -> bool:
        return True

    def successful(self) -> bool:
        return self._state == SUCCESS

    def failed(self) -> bool:
        return self._state == FAILURE

    def get(self, timeout: float | None = None, propagate: bool = True, **kwargs: Any) -> Any:
        """The return value; the task's exception is raised here (``propagate=False``: returned)."""
        if propagate and self._state in EXCEPTION_STATES and isinstance(self._value, BaseException):
            raise self._value
        return self._value

    wait = get

    def forget(self) -> None:
        """Nothing is stored anywhere."""

    def revoke(self, terminate: bool = False, **kwargs: Any) -> list[dict[str, Any]]:
        """It already ran."""
        return []


def _request(task: Task[Any, Any], task_id: str, args: tuple[Any, ...], kwargs: Mapping[str, Any], retries: int,
             headers: Mapping[str, Any] | None, options: Mapping[str, Any], *, eager: bool) -> Request:  # fmt: skip
    parent = request_context.current.get()
    parent_id = parent.id if parent is not None else None
    root_id = (parent.root_id or parent.id) if parent is not None else task_id
    message = TaskMessage(task_id, task.name, args, dict(kwargs), retries=retries, root_id=root_id,
                          parent_id=parent_id, extra_headers=dict(headers or {}))  # fmt: skip
    delivery = {"is_eager": eager, "exchange": options.get("exchange"), "routing_key": options.get("routing_key"),
                "priority": options.get("priority"), "queue": options.get("queue"), "redelivered": False}  # fmt: skip
    return Request(id=task_id, task=task.name, args=args, kwargs=dict(kwargs), retries=retries,
                   delivery_info=delivery, headers=dict(headers or {}), reply_to=None, eta=None, expires=None,
                   hostname=socket.gethostname(), redelivered=False, root_id=root_id, parent_id=parent_id,
                   message=message, eager=eager, called_directly=not eager)  # fmt: skip


def direct_request(task: Task[Any, Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Request:
    """``self.request`` of a task called like a function (``add(2, 3)``): ``called_directly`` is true."""
    return _request(task, new_id(), args, kwargs, 0, None, {}, eager=False)


def _call(task: Task[Any, Any], request: Request) -> Any:
    token = request_context.current.set(request)
    try:
        value = task.run_callable()(*request.args, **request.kwargs)
        if inspect.isawaitable(value):
            value = _await(value)
        return value
    finally:
        request_context.current.reset(token)


def _await(awaitable: Any) -> Any:
    try:
        asyncio.get_running_loop()
    except RuntimeError:

        async def wait() -> Any:
            return await awaitable

        return asyncio.run(wait())
    awaitable.close()
    raise RuntimeError("apply() cannot run an async task on a running event loop: await the function instead")


def apply(
    task: Task[Any, Any],
    args: tuple[Any, ...] | list[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    *,
    task_id: str | None = None,
    retries: int | None = None,
    throw: bool | None = None,
    headers: Mapping[str, Any] | None = None,
    **options: Any,
) -> EagerResult:
    """The body of :meth:`Task.apply` (see the module docstring)."""
    unknown = sorted(set(options) - _OPTIONS)
    if unknown:
        raise TypeError(
            f"{task.name}.apply(): unknown option(s) {', '.join(unknown)} (known: {', '.join(sorted(_OPTIONS))})"
        )
    link, link_error = _signatures(options.get("link")), _signatures(options.get("link_error"))
    args, kwargs = tuple(args or ()), dict(kwargs or {})
    task.check_arguments(args, kwargs)
    task_id = task_id or new_id()
    attempt = retries or 0
    while True:
        request = _request(task, task_id, args, kwargs, attempt, headers, options, eager=True)
        try:
            value = _call(task, request)
        except Ignore:
            return _finish(task, request, IGNORED, None, None)
        except Reject as exc:
            return _finish(task, request, REJECTED, exc, ExceptionInfo(exc))
        except Exception as exc:
            if should_retry(task.options, exc, attempt):
                cause = exc.exc if isinstance(exc, Retry) else exc
                task.on_retry(cause, task_id, args, kwargs, ExceptionInfo(exc))
                attempt += 1
                continue
            cause = exc.exc if isinstance(exc, Retry) and exc.exc is not None else exc
            if throw:
                raise cause from None
            einfo = ExceptionInfo(cause)
            task.on_failure(cause, task_id, args, kwargs, einfo)
            for sig in link_error:  # as Celery: published, with the failed task's id
                sig.apply_async((task_id,), parent_id=task_id, root_id=request.root_id)
            return _finish(task, request, FAILURE, cause, einfo)
        task.on_success(value, task_id, args, kwargs)
        for sig in link:  # as Celery's eager tracer: the callbacks are published, with the result
            sig.apply_async((value,), parent_id=task_id, root_id=request.root_id)
        return _finish(task, request, SUCCESS, value, None)


#: What ``apply()`` takes besides task_id, retries, throw and headers (Celery's names): callbacks, and what only shows
#: in ``self.request.delivery_info`` or is accepted for compatibility.
_OPTIONS = frozenset(
    {"link", "link_error", "exchange", "routing_key", "queue", "priority", "ignore_result", "logfile", "loglevel"}
)


def _signatures(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _finish(task: Task[Any, Any], request: Request, state: str, value: Any, einfo: ExceptionInfo | None) -> EagerResult:
    task.after_return(state, value, request.id, request.args, request.kwargs, einfo)
    return EagerResult(request.id, value, state, einfo.traceback if einfo is not None else None, task.name)
