"""Events in Celery's format: what each worker does, for ``celery events``, Flower and ``amqptasks events`` alike.

A worker started with ``--events`` publishes to Celery's topic exchange ``celeryev`` (celery/events/), routing
key the event type with dots (``task.succeeded``, ``worker.heartbeat``), one JSON object each:
``{type, timestamp, hostname, utcoffset, pid, clock, ...}`` plus the fields Celery's workers send:

- ``worker-online`` / ``worker-heartbeat`` (every :data:`HEARTBEAT_INTERVAL` s) / ``worker-offline``: ``freq``,
  ``active``, ``processed``, ``loadavg``, ``sw_ident``, ``sw_ver``, ``sw_sys``;
- ``task-received`` (``uuid, name, args, kwargs, root_id, parent_id, retries, eta, expires``), ``task-started``
  (``uuid, pid``), ``task-succeeded`` (``uuid, result, runtime``), ``task-failed`` and ``task-retried``
  (``uuid, exception, traceback``), ``task-rejected`` (``uuid, requeue``), ``task-revoked``
  (``uuid, terminated, signum, expired``).

Publishing is fire-and-forget (no confirms, transient, not mandatory) and never awaited by the task's handling:
an event that cannot be sent is dropped, it never slows or breaks the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import platform
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aio_pika
import aio_pika.abc

from amqptasks.constants import EVENTS_EXCHANGE
from amqptasks.worker.middleware import Middleware

if TYPE_CHECKING:
    from amqptasks.config.model import Config
    from amqptasks.worker.consumer import Worker
    from amqptasks.worker.delivery import Delivery

log = logging.getLogger("amqptasks.worker")

#: Events waiting to be written beyond this are dropped (a blocked connection must not grow memory).
MAX_PENDING = 1000
#: Seconds between two worker-heartbeat events (Celery's default ``freq``): monitors mark a worker offline
#: after missing two.
HEARTBEAT_INTERVAL = 2.0
_REPR_LIMIT = 1024
SOFTWARE = {"sw_ident": "py-amqptasks", "sw_ver": "0.1", "sw_sys": platform.system()}


def _utcoffset() -> int:
    """celery.utils.time.utcoffset: hours west of UTC."""
    return (time.altzone if time.daylight else time.timezone) // 3600


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _REPR_LIMIT else text[: _REPR_LIMIT - 3] + "..."


def routing_key(event_type: str) -> str:
    return event_type.replace("-", ".")


class TaskEvents(Middleware):
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.hostname = worker.settings.hostname
        self._exchange: aio_pika.abc.AbstractExchange | None = None
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self._pending: set[asyncio.Future[Any]] = set()
        self._clock = itertools.count(1)
        self._heartbeats: asyncio.Task[None] | None = None

    async def start(self, connection: aio_pika.abc.AbstractRobustConnection) -> None:
        self._channel = channel = await connection.channel(publisher_confirms=False)
        self._exchange = await channel.declare_exchange(EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
        self.worker_event("worker-online")
        self._heartbeats = asyncio.ensure_future(self._beat())

    async def stop(self) -> None:
        if self._heartbeats is not None:
            self._heartbeats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeats
        if self._exchange is not None:
            self.worker_event("worker-offline")
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.gather(*self._pending, return_exceptions=True), 2.0)
            self._exchange = None

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            self.heartbeat()

    def heartbeat(self) -> None:
        self.worker_event("worker-heartbeat")

    def worker_event(self, event_type: str) -> None:
        self.send(event_type, freq=HEARTBEAT_INTERVAL, active=len(self.worker.active),
                  processed=self.worker.processed, loadavg=list(os.getloadavg()), **SOFTWARE)  # fmt: skip

    def send(self, event_type: str, **fields: Any) -> None:
        if self._exchange is None or len(self._pending) >= MAX_PENDING:
            return
        body = {"hostname": self.hostname, "utcoffset": _utcoffset(), "pid": os.getpid(), "clock": next(self._clock),
                **fields, "type": event_type, "timestamp": time.time()}  # fmt: skip
        message = aio_pika.Message(json.dumps(body, default=repr).encode(), content_type="application/json",
                                   content_encoding="utf-8", headers={"hostname": self.hostname},
                                   delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT)  # fmt: skip
        sending = asyncio.ensure_future(self._exchange.publish(message, routing_key(event_type), mandatory=False))
        self._pending.add(sending)
        sending.add_done_callback(self._sent)

    def _sent(self, sending: asyncio.Future[Any]) -> None:
        self._pending.discard(sending)
        if not sending.cancelled() and sending.exception() is not None:
            log.debug("event dropped: %r", sending.exception())

    def task_event(self, event_type: str, delivery: Delivery, **fields: Any) -> None:
        m = delivery.message
        self.send(event_type, uuid=m.id if m else delivery.raw.correlation_id, **fields)

    # --- hooks -------------------------------------------------------------------------------------------------

    def after_receive(self, delivery: Delivery) -> None:
        m = delivery.message
        if m is None:
            return
        self.task_event("task-received", delivery, name=m.task, args=_short(m.args), kwargs=_short(dict(m.kwargs)),
                        root_id=m.root_id, parent_id=m.parent_id, retries=m.retries,
                        eta=m.eta.isoformat() if m.eta else None,
                        expires=m.expires.isoformat() if m.expires else None)  # fmt: skip

    def before_execute(self, delivery: Delivery) -> None:
        self.task_event("task-started", delivery, pid=os.getpid())

    def after_success(self, delivery: Delivery, result: Any) -> None:
        self.task_event("task-succeeded", delivery, result=_short(result), runtime=_runtime(delivery))

    def after_failure(self, delivery: Delivery, exc: BaseException) -> None:
        self.task_event("task-failed", delivery, exception=_short(exc), traceback=_trace(exc),
                        runtime=_runtime(delivery))  # fmt: skip

    def before_retry(self, delivery: Delivery, exc: BaseException | None, countdown: float) -> None:
        # Before the retry message is published: its own task-received comes after this.
        self.task_event("task-retried", delivery, exception=_short(exc), traceback=_trace(exc) if exc else None)

    def after_reject(self, delivery: Delivery, reason: str) -> None:
        self.task_event("task-rejected", delivery, requeue=delivery.settled == "requeue", reason=reason)

    def after_skip(self, delivery: Delivery, state: str) -> None:
        self.task_event("task-revoked", delivery, terminated=delivery.started is not None, signum=None,
                        expired=state == "EXPIRED")  # fmt: skip


def _runtime(delivery: Delivery) -> float:
    return round(time.monotonic() - (delivery.started or delivery.received), 6)


def _trace(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


# --- reading them -------------------------------------------------------------------------------------------


def tail(
    config: Config,
    on_event: Callable[[dict[str, Any]], Any],
    *,
    limit: int | None = None,
    ready: Callable[[], Any] | None = None,
    workers: bool = False,
) -> None:
    """Call *on_event* with each task event (and worker event, with *workers*) as they happen, until *limit*
    events (or Ctrl-C); *ready()* once listening. Reads Celery's workers' events as well as ours.

    The queue is exclusive and auto-delete: it exists while this runs, and sees only events from now on.
    """
    from amqptasks.topology.live import connect

    connection = connect(config.broker, "events")
    try:
        channel = connection.channel()
        channel.exchange_declare(EVENTS_EXCHANGE, "topic", durable=True)
        queue = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
        channel.queue_bind(queue, EVENTS_EXCHANGE, "task.#")
        if workers:
            channel.queue_bind(queue, EVENTS_EXCHANGE, "worker.#")
        if ready is not None:
            ready()
        seen = 0
        for _method, _props, body in channel.consume(queue, auto_ack=True):
            try:
                data = json.loads(body)
            except ValueError:
                continue
            # A Celery worker buffers its task events and sends them as one list (routing key task.multi).
            for event in data if isinstance(data, list) else [data]:
                if not isinstance(event, dict):
                    continue
                on_event(event)
                seen += 1
                if limit is not None and seen >= limit:
                    return
    finally:
        if connection.is_open:
            connection.close()


class EventFormatter:
    """One line per event: time, worker, event, task[id] and what it adds (runtime, reason, exception).

    Only ``task-received`` names the task (as in Celery), so names are remembered by id (boundedly)."""

    def __init__(self, remember: int = 10_000) -> None:
        self._names: dict[str, str] = {}
        self._remember = remember

    def __call__(self, event: dict[str, Any]) -> str:
        uuid = str(event.get("uuid") or "")
        if event.get("name") and uuid:
            if len(self._names) >= self._remember:
                self._names.pop(next(iter(self._names)))
            self._names[uuid] = str(event["name"])
        kind = str(event.get("type") or "")
        when = time.strftime("%H:%M:%S", time.localtime(float(event.get("timestamp") or 0)))
        if kind.startswith("worker-"):
            return f"{when} {event.get('hostname')} {kind} (active {event.get('active')})"
        extra = ""
        if event.get("runtime") is not None:
            extra += f" in {float(event['runtime']) * 1000:.1f} ms"
        for key in ("exception", "reason"):
            if event.get(key):
                extra += f": {event[key]}"
        if event.get("expired"):
            extra += ": expired"
        name = self._names.get(uuid, event.get("name") or "?")
        return f"{when} {event.get('hostname')} {kind.removeprefix('task-'):<9} {name}[{uuid}]{extra}"


def format_event(event: dict[str, Any]) -> str:
    return EventFormatter()(event)
