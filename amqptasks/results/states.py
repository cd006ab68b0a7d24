"""Task states and the state message a worker sends for each (pure: no I/O).

A state message is one JSON document: ``{task_id, status, result, traceback, date_done, children}``, the
shape of Celery's result meta. For FAILURE, RETRY and REVOKED ``result`` holds the exception as data in Celery's
form (:mod:`amqptasks.results.exceptions`); for custom states (``update_state``) it holds the task's ``meta``.

An expired task is stored as REVOKED (as a Celery worker stores it), with ``TaskRevokedError("expired")``: every
client's ``get()`` ends on it, and ours raises :class:`~amqptasks.errors.TaskExpired`. ``EXPIRED`` is only read
(results stored by amqptasks before 0.2).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from amqptasks.message.serialize import json_default, json_object_hook

PENDING = "PENDING"
STARTED = "STARTED"
RETRY = "RETRY"
SUCCESS = "SUCCESS"
FAILURE = "FAILURE"
REJECTED = "REJECTED"
REVOKED = "REVOKED"
EXPIRED = "EXPIRED"
#: States after which nothing more happens to a task.
READY_STATES = frozenset({SUCCESS, FAILURE, REJECTED, REVOKED, EXPIRED})
#: Ready states whose ``result`` is an exception.
EXCEPTION_STATES = frozenset({FAILURE, REJECTED, REVOKED, EXPIRED})

#: The pseudo-queue of RabbitMQ's direct reply-to: consumed (no-ack) and published with on the same channel.
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
#: Redis key of a task's result: Celery's (celery/backends/base.py ``task_keyprefix``), so each side reads the other's.
REDIS_KEY_PREFIX = "celery-task-meta-"
#: Redis key of a saved group result (Celery's ``group_keyprefix``).
REDIS_GROUP_PREFIX = "celery-taskset-meta-"


def state_message(
    task_id: str, status: str, result: Any = None, traceback: str | None = None, children: Sequence[Any] = ()
) -> dict[str, Any]:
    return {
        "task_id": task_id,
        "status": status,
        "result": result,
        "traceback": traceback,
        "date_done": datetime.now(UTC).isoformat() if status in READY_STATES else None,
        "children": list(children),
    }


def _default(value: Any) -> Any:
    # kombu's tags for datetimes, Decimals, UUIDs, bytes (what Celery's json writes and reads); repr for the rest:
    # a result JSON cannot carry still reaches the caller as text rather than failing the task.
    try:
        return json_default(value)
    except TypeError:
        return repr(value)


def encode(meta: Mapping[str, Any] | list[Any]) -> bytes:
    return json.dumps(meta, default=_default).encode()


def loads(body: bytes | str) -> Any:
    """Any JSON of the results (kombu's tags read back)."""
    return json.loads(body, object_hook=json_object_hook)


def decode(body: bytes | str) -> dict[str, Any]:
    meta = json.loads(body, object_hook=json_object_hook)
    if not isinstance(meta, dict) or "status" not in meta:
        raise ValueError(f"not a result state message: {body!r:.200}")
    return meta
