"""A real Celery app, run as a worker subprocess by tests/test_celery_interop.py.

``celery -A tests.celery_interop_app worker -Q interop ...`` with two environment variables:
``INTEROP_BROKER_URL`` (the test's vhost) and ``INTEROP_RECORD_FILE``, where every task run appends one JSON line
(task name, id, args, kwargs, retries, priority) -- the cheap side channel the test reads.
"""

from __future__ import annotations

import json
import os
from typing import Any

from celery import Celery
from kombu import Queue

QUEUE = "interop"
MAX_PRIORITY = 10

app = Celery("celery_interop_app", broker=os.environ.get("INTEROP_BROKER_URL", "memory://"))
app.conf.update(
    # Declared exactly as the amqptasks side declares it, so whichever comes first, the other's declare matches.
    task_queues=[Queue(QUEUE, queue_arguments={"x-max-priority": MAX_PRIORITY})],
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
    # The worker's event loop only checks for SIGTERM when it wakes up; with nothing else scheduled it sleeps up
    # to ~5 s. A short heartbeat wakes it every ~0.7 s, so the test's warm shutdown takes well under a second.
    broker_heartbeat=2,
    worker_hijack_root_logger=False,
)


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
    }
    with open(os.environ["INTEROP_RECORD_FILE"], "a", encoding="utf-8") as out:
        out.write(json.dumps(line) + "\n")


@app.task(name="interop.record", bind=True)
def record(self: Any, *args: Any, **kwargs: Any) -> str:
    _record(self, args, kwargs)
    return f"recorded {self.request.id}"
