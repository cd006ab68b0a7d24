"""Task states and the state message a worker sends for each (pure: no I/O).

A state message is one JSON document: ``{task_id, status, result, traceback, date_done, children}``, the
shape of Celery's result meta. For FAILURE (and RETRY) ``result`` holds the exception as data
(:mod:`amqptasks.results.exceptions`); for custom states (``update_state``) it holds the task's ``meta``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

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
#: Redis key of a task's result.
REDIS_KEY_PREFIX = "amqptasks-result-"


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


def encode(meta: Mapping[str, Any]) -> bytes:
    # default=repr: a result JSON cannot carry still reaches the caller as text rather than failing the task.
    return json.dumps(meta, default=repr).encode()


def decode(body: bytes | str) -> dict[str, Any]:
    meta = json.loads(body)
    if not isinstance(meta, dict) or "status" not in meta:
        raise ValueError(f"not a result state message: {body!r:.200}")
    return meta
