"""Prometheus metrics of one worker process (``amqptasks worker --metrics-port 9100``), via prometheus_client.

Each worker has its own registry, so several workers in one process (tests) never collide; with
``--processes N`` each process needs its own port.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from amqptasks.worker.middleware import Middleware

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from amqptasks.worker.consumer import Worker
    from amqptasks.worker.delivery import Delivery

#: A reject reason is a label only when it is a short code ("worker-lost", "expired"); free text is "rejected".
_REASON = re.compile(r"[a-z][a-z_-]{0,31}")


class Metrics(Middleware):
    def __init__(self, worker: Worker) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.tasks = Counter("amqptasks_tasks", "Tasks by final state.", ["task", "state"], registry=r)
        self.runtime = Histogram("amqptasks_task_runtime_seconds", "Task run time.", ["task"], registry=r)
        self.retries = Counter("amqptasks_retries", "Retries published.", ["task"], registry=r)
        self.dead_letters = Counter("amqptasks_dead_letters", "Messages dead-lettered.", ["task", "reason"],
                                    registry=r)  # fmt: skip
        # Messages being handled: received and not yet through the worker (acks_late=False ones included).
        self.prefetch = Gauge("amqptasks_prefetch_in_use", "Messages received, not yet settled.", registry=r)
        self.prefetch.set_function(lambda: worker.held)
        self.connection_up = Gauge("amqptasks_connection_up", "1 while connected to the broker.", registry=r)
        self.connection_up.set_function(lambda: 1.0 if worker.connected else 0.0)
        self.server: WSGIServer | None = None

    def start(self, port: int) -> None:
        self.server, _thread = start_http_server(port, registry=self.registry)

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.server_port)

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def _done(self, delivery: Delivery, state: str) -> None:
        name = _task(delivery)
        self.tasks.labels(name, state).inc()
        self.runtime.labels(name).observe(time.monotonic() - (delivery.started or delivery.received))

    def after_success(self, delivery: Delivery, result: Any) -> None:
        self._done(delivery, "succeeded")

    def after_failure(self, delivery: Delivery, exc: BaseException) -> None:
        self._done(delivery, "failed")
        self.dead_letters.labels(_task(delivery), "failed").inc()

    def after_retry(self, delivery: Delivery, exc: BaseException | None, countdown: float) -> None:
        self.tasks.labels(_task(delivery), "retried").inc()
        self.retries.labels(_task(delivery)).inc()

    def after_reject(self, delivery: Delivery, reason: str) -> None:
        if delivery.settled == "requeue":
            self.tasks.labels(_task(delivery), "requeued").inc()
            return
        self.tasks.labels(_task(delivery), "rejected").inc()
        code = reason.partition(":")[0].strip()
        self.dead_letters.labels(_task(delivery), code if _REASON.fullmatch(code) else "rejected").inc()


def _task(delivery: Delivery) -> str:
    return delivery.message.task if delivery.message else "unknown"
