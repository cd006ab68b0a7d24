"""Failure records: a worker middleware that writes one small JSON document per failed or dead-lettered task
to the ``amqptasks.failures`` queue (bounded, oldest dropped first), so the reason survives without a result backend."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import traceback
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from amqptasks.broker.aio import open_robust
from amqptasks.broker.memory import broker_for, is_memory_url
from amqptasks.constants import FAILURES_QUEUE, FAILURES_QUEUE_ARGUMENTS
from amqptasks.dlq.reader import record_key
from amqptasks.message.envelope import Envelope
from amqptasks.worker.middleware import Middleware

if TYPE_CHECKING:
    from amqptasks.app import App
    from amqptasks.worker.delivery import Delivery

log = logging.getLogger("amqptasks.worker")

#: Longest a record may hold up its message's settling.
RECORD_TIMEOUT = 5.0
#: Lines of traceback a record keeps (its end: where it failed).
TRACEBACK_LINES = 20
_BANNER = "Traceback (most recent call last):"


def failure_record(delivery: Delivery, exc: BaseException | None, reason: str, hostname: str) -> dict[str, Any]:
    """The record of one failure (pure: no I/O)."""
    message, raw = delivery.message, delivery.raw
    excerpt = ""
    if exc is not None:
        # Only the frames and the error: the "Traceback (most recent call last):" banner says nothing here.
        lines = [line for line in "".join(traceback.format_exception(exc)).splitlines() if line != _BANNER]
        excerpt = "\n".join(lines[-TRACEBACK_LINES:])
    return {
        "task_id": message.id if message else record_key(raw.headers, raw.correlation_id, raw.body),
        "task": message.task if message else str((raw.headers or {}).get("task") or "")[:200] or None,
        "queue": delivery.queue,
        "exc_type": type(exc).__name__ if exc is not None else None,
        "exc_message": str(exc) if exc is not None else None,
        "traceback": excerpt,
        "reason": reason,
        "hostname": hostname,
        "time": datetime.now(UTC).isoformat(),
    }


class FailureRecords(Middleware):
    """Publishes a record on ``after_failure`` and on ``after_reject`` to the DLQ (not on a requeue).

    Never blocks or fails settling: any error is logged and the message's fate is unchanged.
    """

    def __init__(self, app: App, hostname: str | None = None) -> None:
        self.app = app
        self.hostname = hostname or f"amqptasks@{socket.gethostname()}"
        self._declared = False

    async def after_failure(self, delivery: Delivery, exc: BaseException) -> None:
        await self._record(failure_record(delivery, exc, "failed", self.hostname))

    async def after_reject(self, delivery: Delivery, reason: str) -> None:
        if delivery.settled == "reject":
            await self._record(failure_record(delivery, None, reason, self.hostname))

    async def _record(self, record: dict[str, Any]) -> None:
        try:
            async with asyncio.timeout(RECORD_TIMEOUT):
                if not self._declared:
                    await self._declare()
                publisher = await self.app.aio_publisher()
                body = json.dumps(record, default=str).encode()
                await publisher.publish(Envelope("", FAILURES_QUEUE, body, correlation_id=record["task_id"]))
        except Exception as exc:
            log.warning("could not write the failure record of task %s (%s); continuing", record["task_id"], exc)

    async def _declare(self) -> None:
        if is_memory_url(self.app.config.broker.url):
            channel = broker_for(self.app.config.broker.url).channel()
            channel.queue_declare(FAILURES_QUEUE, durable=True, arguments=dict(FAILURES_QUEUE_ARGUMENTS))
            self._declared = True
            return
        # A connection of its own: a declare that conflicts closes its channel, which must never be the
        # consuming channel (that would requeue every delivery) nor the publisher's.
        connection = await open_robust(self.app.config.broker, f"amqptasks failure records {self.hostname}")
        try:
            channel = await connection.channel()
            await channel.declare_queue(FAILURES_QUEUE, durable=True, arguments=dict(FAILURES_QUEUE_ARGUMENTS))
            self._declared = True
        finally:
            await connection.close()
