"""Exceptions as data, and back, without pickle: Celery's JSON form, so both sides read each other's failures.

A failure travels as Celery's result backends store it with a JSON serializer (celery/backends/base.py
``prepare_exception``): ``{exc_type: "QualName", exc_message: [args...], exc_module: "module"}``; the traceback is
the state's own ``traceback`` field. Our exceptions that Celery has too travel under Celery's names (our
``TimeLimitExceeded`` as ``billiard.exceptions.TimeLimitExceeded``, a revoked or expired task as
``celery.exceptions.TaskRevokedError("revoked" | "expired")``), so a Celery client raises its own class for them;
reading, those names come back as ours.

A failure is rebuilt as its own class only when that class is a builtin exception, one of amqptasks' own, or
defined in the module of the task that raised it, and only if that module is already imported here:
:func:`rebuild` looks in ``sys.modules`` and never imports anything (a result must not be able to make the
caller import code). Everything else becomes a :class:`TaskError` carrying the type name, message and traceback.
"""

from __future__ import annotations

import builtins
import sys
import traceback as tb
from collections.abc import Mapping
from typing import Any

from amqptasks import errors
from amqptasks.errors import AmqpTasksError

#: Modules whose exceptions are always rebuilt (when imported, which these always are).
ALWAYS_ALLOWED = frozenset({"builtins", "amqptasks.errors", "amqptasks.results.chord"})

#: Our exceptions that Celery has too, (module, qualified name) of ours → the names they travel under.
_TO_CELERY: dict[tuple[str, str], tuple[str, str]] = {
    ("amqptasks.errors", "TimeLimitExceeded"): ("billiard.exceptions", "TimeLimitExceeded"),
    ("amqptasks.errors", "SoftTimeLimitExceeded"): ("billiard.exceptions", "SoftTimeLimitExceeded"),
    ("amqptasks.errors", "Terminated"): ("billiard.exceptions", "Terminated"),
    ("amqptasks.errors", "Reject"): ("celery.exceptions", "Reject"),
    ("amqptasks.errors", "MaxRetriesExceeded"): ("celery.exceptions", "MaxRetriesExceededError"),
    ("amqptasks.results.chord", "ChordError"): ("celery.exceptions", "ChordError"),
}
_REVOKED = ("celery.exceptions", "TaskRevokedError")
#: Celery's names (as a Celery worker stores them) read back as ours.
_FROM_CELERY: dict[tuple[str, str], tuple[str, str]] = {
    **{celery: ours for ours, celery in _TO_CELERY.items()},
    ("celery.exceptions", "TimeLimitExceeded"): ("amqptasks.errors", "TimeLimitExceeded"),
    ("celery.exceptions", "SoftTimeLimitExceeded"): ("amqptasks.errors", "SoftTimeLimitExceeded"),
    ("celery.exceptions", "Terminated"): ("amqptasks.errors", "Terminated"),
}
#: The reasons Celery gives a revoked task (celery/worker/request.py).
REVOKED_REASONS = ("revoked", "expired", "terminated")


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
    """*exc* as Celery's JSON form (the traceback goes in the state's ``traceback``: :func:`format_traceback`)."""
    cls = type(exc)
    module, name = _TO_CELERY.get((cls.__module__, cls.__qualname__)) or (cls.__module__, cls.__qualname__)
    return {"exc_type": name, "exc_message": [_json_safe(a) for a in exc.args], "exc_module": module}


def revoked_payload(reason: str) -> dict[str, Any]:
    """A revoked task's result, as a Celery worker stores it: ``TaskRevokedError(reason)``; *reason* is one of
    :data:`REVOKED_REASONS` ("expired" is how every client tells an expired task from a revoked one)."""
    return {"exc_type": _REVOKED[1], "exc_message": [reason], "exc_module": _REVOKED[0]}


def format_traceback(exc: BaseException) -> str:
    return "".join(tb.format_exception(exc))


def describe(payload: Any) -> tuple[str, str]:
    """``("module.QualName", message)`` of a failure's payload, for logs and errbacks."""
    type_name, message, _args = _parts(payload)
    return type_name, message


def _parts(payload: Any) -> tuple[str, str, list[Any]]:
    if not isinstance(payload, Mapping):
        return "UnknownError", repr(payload), [repr(payload)]
    if "exc_type" not in payload and "type" in payload:  # amqptasks < 0.2 (results stored before the upgrade)
        args = payload.get("args")
        message = str(payload.get("message") or "")
        return str(payload["type"]), message, list(args) if isinstance(args, list) else [message]
    name, module = str(payload.get("exc_type") or "Exception"), payload.get("exc_module")
    raw = payload.get("exc_message")
    args = list(raw) if isinstance(raw, list | tuple) else ([] if raw in (None, "") else [raw])
    message = str(args[0]) if len(args) == 1 else (str(tuple(args)) if args else "")
    return (f"{module}.{name}" if module else name), message, args


def _lookup(module: str, qualname: str) -> Any:
    found: Any = sys.modules.get(module)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return found


def rebuild(payload: Any, task_module: str | None = None, traceback: str | None = None) -> BaseException:
    """The exception a FAILURE (or REVOKED) result describes (see the module docstring for which classes are
    allowed). *traceback* is the state's, added to the exception as a note."""
    type_name, message, args = _parts(payload)
    if isinstance(payload, Mapping) and isinstance(payload.get("traceback"), str):
        traceback = traceback or payload["traceback"]  # the older form kept it in the payload
    notes = [f"raised in a task; remote traceback:\n{traceback}"] if traceback else []
    module, _, name = type_name.rpartition(".")
    if (module, name) == _REVOKED:
        reason = message or "revoked"
        why = errors.TaskExpired if reason == "expired" else errors.TaskRevoked
        return why(f"the task was {reason} and did not run" if reason in REVOKED_REASONS else reason)
    ours = _FROM_CELERY.get((module, name))
    found: Any = _lookup(*ours) if ours is not None else None
    if found is None:
        allowed = set(ALWAYS_ALLOWED) | ({task_module} if task_module else set())
        module_name, cls = _split(type_name, allowed)
        if module_name is not None and cls is not None:
            found = getattr(builtins, cls, None) if module_name == "builtins" else _lookup(module_name, cls)
    if isinstance(found, type) and issubclass(found, Exception):
        try:
            exc = found(*args)
        except Exception:  # a constructor with other arguments: the generic error says the same
            pass
        else:
            exc.__notes__ = notes
            return exc
    return TaskError(type_name, message, traceback)


def _split(type_name: str, allowed: set[str]) -> tuple[str | None, str | None]:
    """The allowed module that defines *type_name* and the class's qualified name in it."""
    for module in sorted(allowed, key=len, reverse=True):
        if type_name.startswith(module + "."):
            return module, type_name[len(module) + 1 :]
    return None, None
