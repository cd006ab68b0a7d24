"""Parents and children: what a running task publishes is its child, as in Celery.

A task published while another runs in this worker (``delay``, ``apply_async``, a chain, group or chord started
from the task's code) gets the running task's id as its ``parent_id`` and its root as ``root_id``, unless the
call gives them. The worker's results middleware opens a record for each run (:func:`begin`), publishing adds
each child to it (:func:`add`), and the run's final state carries them (:func:`take`) in Celery's result-tuple
form, which ``AsyncResult.children`` rebuilds.

Records are kept per task id, and only for runs the middleware began: a thread still running after its hard
time limit (its run is over) records nothing and leaks nothing. A process-pool child keeps its own record of
the run and sends it back with the result; the worker merges it (:func:`extend`).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any, Protocol, TypeVar

from amqptasks.worker import request as request_context

_lock = threading.Lock()
_children: dict[str, list[Any]] = {}


def inherit(call: Mapping[str, Any]) -> Mapping[str, Any]:
    """*call* (``apply_async`` options) with ``parent_id`` and ``root_id`` from the running task, if any."""
    request = request_context.current.get()
    if request is None or call.get("parent_id"):
        return call
    return {**call, "parent_id": request.id, "root_id": call.get("root_id") or request.root_id or request.id}


class _Result(Protocol):
    def as_tuple(self) -> Any: ...


R = TypeVar("R", bound=_Result)


def added(result: R, add_to_parent: Any = True) -> R:
    """*result* (an AsyncResult or GroupResult), recorded as a child of the task running in this context unless
    *add_to_parent* is false (Celery's option). Its result tuple is built only when a run is recording."""
    request = request_context.current.get()
    if request is None or not add_to_parent:
        return result
    with _lock:
        record = _children.get(request.id)
        if record is not None:
            record.append(result.as_tuple())
    return result


def begin(task_id: str) -> None:
    with _lock:
        _children[task_id] = []


def take(task_id: str) -> list[Any]:
    """The children recorded for the run of *task_id*, closing its record."""
    with _lock:
        return _children.pop(task_id, None) or []


def extend(task_id: str, children: list[Any]) -> None:
    """Add *children* recorded elsewhere (a process-pool child) to the open record of *task_id*, if any."""
    if not children:
        return
    with _lock:
        record = _children.get(task_id)
        if record is not None:
            record.extend(children)
