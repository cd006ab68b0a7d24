"""Exceptions as data, and back, without pickle.

A failure travels as ``{type: "module.QualName", message, args, traceback}``. It is rebuilt as its own class
only when that class is a builtin exception, one of amqptasks' own, or defined in the module of the task that
raised it, and only if that module is already imported here: :func:`rebuild` looks in ``sys.modules`` and
never imports anything (a result must not be able to make the caller import code). Everything else becomes a
:class:`TaskError` carrying the type name, message and traceback.
"""

from __future__ import annotations

import builtins
import sys
import traceback as tb
from collections.abc import Mapping
from typing import Any

from amqptasks.errors import AmqpTasksError

#: Modules whose exceptions are always rebuilt (when imported, which these always are).
ALWAYS_ALLOWED = frozenset({"builtins", "amqptasks.errors", "amqptasks.results.chord"})


class TaskError(AmqpTasksError):
    """A task failed with an exception this process may not (or cannot) rebuild as its own class."""

    def __init__(self, type_name: str, message: str, traceback: str | None = None) -> None:
        self.type_name = type_name
        self.message = message
        self.traceback = traceback
        super().__init__(f"{type_name}: {message}")


def _json_safe(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return repr(value)


def exception_payload(exc: BaseException) -> dict[str, Any]:
    cls = type(exc)
    return {
        "type": f"{cls.__module__}.{cls.__qualname__}",
        "message": str(exc),
        "args": [_json_safe(a) for a in exc.args],
        "traceback": "".join(tb.format_exception(exc)),
    }


def _lookup(module: str, qualname: str) -> Any:
    found: Any = sys.modules.get(module)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return found


def rebuild(payload: Any, task_module: str | None = None) -> BaseException:
    """The exception a FAILURE result describes (see the module docstring for which classes are allowed)."""
    if not isinstance(payload, Mapping):
        return TaskError("UnknownError", repr(payload))
    type_name = str(payload.get("type") or "Exception")
    message = str(payload.get("message") or "")
    trace = payload.get("traceback")
    allowed = set(ALWAYS_ALLOWED) | ({task_module} if task_module else set())
    module, cls = _split(type_name, allowed)
    if module is not None and cls is not None:
        found = getattr(builtins, cls, None) if module == "builtins" else _lookup(module, cls)
        if isinstance(found, type) and issubclass(found, Exception):
            try:
                exc = found(*(payload.get("args") or [message]))
            except Exception:  # a constructor with other arguments: the generic error says the same
                pass
            else:
                exc.__notes__ = [f"raised in a task; remote traceback:\n{trace}"] if trace else []
                return exc
    return TaskError(type_name, message, trace if isinstance(trace, str) else None)


def _split(type_name: str, allowed: set[str]) -> tuple[str | None, str | None]:
    """The allowed module that defines *type_name* and the class's qualified name in it."""
    for module in sorted(allowed, key=len, reverse=True):
        if type_name.startswith(module + "."):
            return module, type_name[len(module) + 1 :]
    return None, None
