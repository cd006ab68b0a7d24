"""Task events: what each worker did with each task, published as small JSON messages, and a tail to read them.

A worker started with ``--events`` publishes ``received``, ``started``, ``succeeded`` (with its runtime),
``failed``, ``retried`` and ``rejected`` to the topic exchange ``amqptasks.events`` with routing key
``task.<event>``. Publishing is fire-and-forget (no confirms, transient, not mandatory) and never awaited by the
task's handling: an event that cannot be sent is dropped, it never slows or breaks the worker.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aio_pika
import aio_pika.abc

from amqptasks.constants import EVENTS_EXCHANGE, EVENTS_ROUTING_PREFIX
from amqptasks.worker.middleware import Middleware

if TYPE_CHECKING:
    from amqptasks.config.model import Config
    from amqptasks.worker.delivery import Delivery

log = logging.getLogger("amqptasks.worker")

#: Events waiting to be written beyond this are dropped (a blocked connection must not grow memory).
MAX_PENDING = 1000


class TaskEvents(Middleware):
    def __init__(self, hostname: str) -> None:
        self.hostname = hostname
        self._exchange: aio_pika.abc.AbstractExchange | None = None
        self._pending: set[asyncio.Task[Any]] = set()

    async def start(self, connection: aio_pika.abc.AbstractRobustConnection) -> None:
        channel = await connection.channel(publisher_confirms=False)
        self._exchange = await channel.declare_exchange(EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)

    def emit(self, event: str, delivery: Delivery, **fields: Any) -> None:
        if self._exchange is None or len(self._pending) >= MAX_PENDING:
            return
        m = delivery.message
        body = {"event": event, "id": m.id if m else None, "task": m.task if m else None, "queue": delivery.queue,
                "hostname": self.hostname, "timestamp": time.time(), **fields}  # fmt: skip
        message = aio_pika.Message(json.dumps(body, default=repr).encode(), content_type="application/json",
                                   delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT)  # fmt: skip
        sending = asyncio.ensure_future(self._exchange.publish(message, EVENTS_ROUTING_PREFIX + event, mandatory=False))
        self._pending.add(sending)
        sending.add_done_callback(self._sent)

    def _sent(self, sending: asyncio.Task[Any]) -> None:
        self._pending.discard(sending)
        if not sending.cancelled() and sending.exception() is not None:
            log.debug("task event dropped: %r", sending.exception())

    def after_receive(self, delivery: Delivery) -> None:
        self.emit("received", delivery)

    def before_execute(self, delivery: Delivery) -> None:
        self.emit("started", delivery)

    def after_success(self, delivery: Delivery, result: Any) -> None:
        self.emit("succeeded", delivery, runtime=_runtime(delivery))

    def after_failure(self, delivery: Delivery, exc: BaseException) -> None:
        self.emit("failed", delivery, runtime=_runtime(delivery), exception=f"{type(exc).__name__}: {exc}")

    def after_retry(self, delivery: Delivery, exc: BaseException | None, countdown: float) -> None:
        self.emit("retried", delivery, countdown=countdown, exception=repr(exc))

    def after_reject(self, delivery: Delivery, reason: str) -> None:
        self.emit("rejected", delivery, reason=reason, requeued=delivery.settled == "requeue")


def _runtime(delivery: Delivery) -> float:
    return round(time.monotonic() - (delivery.started or delivery.received), 6)


# --- reading them -------------------------------------------------------------------------------------------


def tail(
    config: Config,
    on_event: Callable[[dict[str, Any]], Any],
    *,
    limit: int | None = None,
    ready: Callable[[], Any] | None = None,
) -> None:
    """Call *on_event* with each task event, as they happen, until *limit* events (or Ctrl-C); *ready()* once
    listening.

    The queue is exclusive and auto-delete: it exists while this runs, and sees only events from now on.
    """
    from amqptasks.topology.live import connect

    connection = connect(config.broker, "events")
    try:
        channel = connection.channel()
        channel.exchange_declare(EVENTS_EXCHANGE, "topic", durable=True)
        queue = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
        channel.queue_bind(queue, EVENTS_EXCHANGE, EVENTS_ROUTING_PREFIX + "#")
        if ready is not None:
            ready()
        seen = 0
        for _method, _props, body in channel.consume(queue, auto_ack=True):
            try:
                event = json.loads(body)
            except ValueError:
                continue
            on_event(event)
            seen += 1
            if limit is not None and seen >= limit:
                return
    finally:
        if connection.is_open:
            connection.close()


def format_event(event: dict[str, Any]) -> str:
    """One line: time, worker, event, task[id] and what the event adds (runtime, reason, exception)."""
    when = time.strftime("%H:%M:%S", time.localtime(float(event.get("timestamp") or 0)))
    extra = ""
    if "runtime" in event:
        extra += f" in {float(event['runtime']) * 1000:.1f} ms"
    if "countdown" in event:
        extra += f" in {float(event['countdown']):.1f} s"
    for key in ("exception", "reason"):
        if event.get(key):
            extra += f": {event[key]}"
    return f"{when} {event.get('hostname')} {event.get('event')!s:<9} {event.get('task')}[{event.get('id')}]{extra}"
