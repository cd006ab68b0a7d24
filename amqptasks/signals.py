"""Hook points users can connect to, like Celery's signals: timing, Sentry, audit logs...

``@app.signals.task_failure.connect`` registers a receiver; receivers are called with keyword arguments
and an exception in one is logged, never allowed to break the worker or the publisher.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("amqptasks.signals")

Receiver = Callable[..., Any]


class Signal:
    def __init__(self, name: str) -> None:
        self.name = name
        self.receivers: list[Receiver] = []

    def connect(self, receiver: Receiver) -> Receiver:
        self.receivers.append(receiver)
        return receiver

    def disconnect(self, receiver: Receiver) -> None:
        self.receivers.remove(receiver)

    def send(self, **kwargs: Any) -> None:
        for receiver in list(self.receivers):
            try:
                receiver(signal=self.name, **kwargs)
            except Exception:
                log.exception("receiver %r of signal %s failed", receiver, self.name)


class Signals:
    """The hook points: publishing (both sides) and every step of a task's life in the worker."""

    def __init__(self) -> None:
        self.before_publish = Signal("before_publish")
        self.after_publish = Signal("after_publish")
        self.task_received = Signal("task_received")
        self.task_prerun = Signal("task_prerun")
        self.task_postrun = Signal("task_postrun")
        self.task_success = Signal("task_success")
        self.task_failure = Signal("task_failure")
        self.task_retry = Signal("task_retry")
        self.task_rejected = Signal("task_rejected")
