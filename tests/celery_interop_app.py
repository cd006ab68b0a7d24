"""A real Celery app, run as a worker subprocess (``celery -A tests.celery_interop_app worker -Q ...``) by the
Celery interop tests, and used as the Celery *client* in the tests themselves.

Environment: ``INTEROP_BROKER_URL`` (the test module's vhost), ``INTEROP_RESULT_BACKEND`` (``rpc://`` or a
``redis://`` URL; none by default) and ``INTEROP_RECORD_FILE``, where every ``interop.record`` run appends one
JSON line (task name, id, args, kwargs, retries, priority) -- the cheap side channel the tests read.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from celery import Celery
from kombu import Queue

QUEUE = "interop"
MAX_PRIORITY = 10
#: Queues declared plainly on both sides (classic, durable, no arguments), so whichever side declares first, the
#: other's declare matches.
PLAIN_QUEUES = ("interop_redis", "ours", "ours_redis", "fleet")


def make_app(broker_url: str, backend: str | None = None, name: str = "celery_interop_app") -> Celery:
    celery_app = Celery(name, broker=broker_url, backend=backend or None, set_as_current=False)
    celery_app.conf.update(
        task_queues=[Queue(QUEUE, queue_arguments={"x-max-priority": MAX_PRIORITY})]
        + [Queue(name) for name in PLAIN_QUEUES],
        task_default_queue=QUEUE,
        broker_connection_retry_on_startup=True,
        # The worker's event loop only checks for SIGTERM when it wakes up; with nothing else scheduled it sleeps
        # up to ~5 s. A short heartbeat wakes it every ~0.7 s, so a warm shutdown takes well under a second.
        broker_heartbeat=2,
        worker_hijack_root_logger=False,
        result_expires=3600,
    )
    return celery_app


app = make_app(os.environ.get("INTEROP_BROKER_URL", "memory://"), os.environ.get("INTEROP_RESULT_BACKEND"))


def _record(task: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    delivery = task.request.delivery_info or {}
    line = {
        "task": task.name,
        "id": task.request.id,
        "args": list(args),
        "kwargs": kwargs,
        "retries": task.request.retries,
        "root_id": task.request.root_id,
        "parent_id": task.request.parent_id,
        "priority": delivery.get("priority"),
        "timelimit": list(task.request.timelimit or (None, None)),
        "hostname": task.request.hostname,
    }
    with open(os.environ["INTEROP_RECORD_FILE"], "a", encoding="utf-8") as out:
        out.write(json.dumps(line) + "\n")


@app.task(name="interop.record", bind=True)
def record(self: Any, *args: Any, **kwargs: Any) -> str:
    _record(self, args, kwargs)
    return f"recorded {self.request.id}"


@app.task(name="math.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="math.tsum")
def tsum(numbers: list[int]) -> int:
    return sum(numbers)


@app.task(name="interop.fail")
def fail(message: str) -> None:
    raise ValueError(message)


@app.task(name="interop.sleep")
def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds
