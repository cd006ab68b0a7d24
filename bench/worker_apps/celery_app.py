"""Celery 5: ``celery -A worker_apps.celery_app worker -Q bench`` (run from bench/)."""

from __future__ import annotations

import os

from celery import Celery
from kombu import Queue  # type: ignore[attr-defined]

from worker_apps.counter import tick

QUEUE = "bench"
TASK = "bench.noop"


def noop(x: int, y: int) -> None:
    tick()


def make(url: str) -> Celery:
    app = Celery("bench", broker=url, set_as_current=False)
    app.conf.update(
        task_queues=[Queue(QUEUE)],  # type: ignore[no-untyped-call]  # durable; messages persistent (Celery's defaults)
        task_default_queue=QUEUE,
        task_acks_late=True,  # ack after the task ran, as the other two do by default
        broker_connection_retry_on_startup=True,
        task_ignore_result=True,  # no result backend configured anyway
    )
    app.task(name=TASK)(noop)
    return app


if os.environ.get("BENCH_BROKER_URL"):
    app = make(os.environ["BENCH_BROKER_URL"])
