"""The worker's side of broadcast control, and the monitoring it switches on (events, metrics).

Each worker consumes its own exclusive, auto-delete queue bound to the ``amqptasks.control`` fanout exchange and
answers on the command's ``reply_to`` (direct reply-to) with ``{"hostname", "id", "ok" | "error"}``.

``revoke`` remembers the id (:class:`RevokedIds`): a revoked message is acknowledged and never run when it
arrives. Revocations are also stored on the broker (control/stored.py): at start, before answering commands, a
worker reads back those of the last 3 hours, and it keeps reading them while it runs.

With ``terminate``, a running task is stopped and its message acknowledged, its state REVOKED: an ``async def``
task is cancelled; a processes-pool child running it is killed (and replaced); a thread gets ``Terminated`` raised
in it, at its next Python bytecode (not while it is blocked in C, e.g. in ``time.sleep``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from typing import TYPE_CHECKING, Any

import aio_pika
import aio_pika.abc

from amqptasks.constants import CONTROL_EXCHANGE, CONTROL_QUEUE_PREFIX
from amqptasks.control.revoked import RevokedIds
from amqptasks.control.stored import StoredRevocations
from amqptasks.monitor.events import TaskEvents
from amqptasks.monitor.metrics import Metrics
from amqptasks.tasks.options import parse_rate
from amqptasks.worker.events import RateLimits
from amqptasks.worker.middleware import Middleware

if TYPE_CHECKING:
    from amqptasks.worker.consumer import Worker

log = logging.getLogger("amqptasks.worker")


class WorkerControl:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.revoked = RevokedIds()
        self.started = time.time()
        self.events = TaskEvents(worker.settings.hostname) if worker.settings.events else None
        self.metrics = Metrics(worker) if worker.settings.metrics_port is not None else None
        self._channel: aio_pika.abc.AbstractChannel | None = None
        name = worker.app.config.broker.connection_name or f"amqptasks worker {worker.settings.hostname}"
        self.stored = StoredRevocations(worker.app.config, f"{name} (revocations)", self._on_stored_revocation)

    def middleware(self) -> list[Middleware]:
        return [m for m in (self.events, self.metrics) if m is not None]

    def is_revoked(self, task_id: str) -> bool:
        return task_id in self.revoked

    async def start(self, connection: aio_pika.abc.AbstractRobustConnection) -> None:
        # First: a message checked against revoked ids must find every revocation already stored. On a connection
        # of its own, which a RabbitMQ 3.10 stream bug may close (see control/stored.py).
        await self.stored.start()
        channel = self._channel = await connection.channel()
        exchange = await channel.declare_exchange(CONTROL_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True)
        name = f"{CONTROL_QUEUE_PREFIX}{self.worker.settings.hostname}.{uuid.uuid4().hex[:8]}"
        queue = await channel.declare_queue(name, exclusive=True, auto_delete=True)
        await queue.bind(exchange)
        await queue.consume(self._on_command, no_ack=True)
        if self.events is not None:
            await self.events.start(connection)
        if self.metrics is not None:
            self.metrics.start(self.worker.settings.metrics_port or 0)

    async def stop(self) -> None:
        if self.metrics is not None:
            self.metrics.stop()
        await self.stored.stop()
        if self._channel is not None:
            try:
                await self._channel.close()
            except Exception:  # the connection may be gone already
                log.debug("closing the control channel failed", exc_info=True)

    def _on_stored_revocation(self, task_id: str, at: float) -> None:
        if task_id not in self.revoked and self.revoked.add(task_id, at):
            log.debug("control: task %s revoked (stored %.0f s ago)", task_id, time.time() - at)

    # --- commands -------------------------------------------------------------------------------------

    async def _on_command(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        try:
            command = json.loads(message.body)
            name, arguments = str(command["command"]), dict(command.get("arguments") or {})
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("control: ignoring a malformed command: %r", message.body[:200])
            return
        handler = getattr(self, f"_do_{name}", None)
        reply: dict[str, Any] = {"hostname": self.worker.settings.hostname, "id": command.get("id")}
        try:
            if handler is None:
                raise ValueError(f"unknown command {name!r}")
            reply["ok"] = await handler(**arguments)
        except Exception as exc:  # a bad command must never harm the worker
            reply["error"] = f"{type(exc).__name__}: {exc}"
        # The broker rewrites the reply_to *property* into this sender's own direct reply-to address.
        reply_to = message.reply_to if command.get("reply_to") else None
        if reply_to and self._channel is not None:
            body = json.dumps(reply, default=str).encode()
            out = aio_pika.Message(body, content_type="application/json", correlation_id=message.correlation_id,
                                   delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT)  # fmt: skip
            try:
                await self._channel.default_exchange.publish(out, routing_key=str(reply_to))
            except Exception:  # the sender may have gone (direct reply-to): nothing to do
                log.debug("control: reply to %s failed", reply_to, exc_info=True)

    async def _do_ping(self) -> str:
        return "pong"

    async def _do_registered(self) -> list[str]:
        return sorted(self.worker.app.tasks)

    async def _do_active(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [
            {"id": task_id, "task": d.message.task if d.message else None, "queue": d.queue,
             "args": list(d.message.args) if d.message else [], "kwargs": dict(d.message.kwargs) if d.message else {},
             "running_for": round(now - (d.started or d.received), 3)}
            for task_id, (d, _task) in list(self.worker.active.items())
        ]  # fmt: skip

    async def _do_stats(self) -> dict[str, Any]:
        s = self.worker.settings
        return {"pid": os.getpid(), "ppid": os.getppid(), "pool": s.pool, "concurrency": s.concurrency,
                "queues": list(s.queues), "processed": self.worker.processed, "running": self.worker.running,
                "revoked": len(self.revoked), "uptime": round(time.time() - self.started, 1)}  # fmt: skip

    async def _do_rate_limit(self, task: str, rate: str | None = None) -> str:
        if rate is not None:
            parse_rate(rate)  # a bad rate is refused here, not when the next task starts
        limits = [m for m in self.worker.middleware if isinstance(m, RateLimits)]
        for m in limits:
            m.overrides[task] = rate
        log.info("control: rate limit of %s set to %s", task, rate or "the task's own")
        return f"rate limit of {task} set to {rate or 'its own'}"

    async def _do_revoke(self, task_id: str, terminate: bool = False) -> str:
        self.revoked.add(task_id)
        log.info("control: task %s revoked%s", task_id, " (terminate)" if terminate else "")
        running = self.worker.active.get(task_id)
        if not terminate or running is None:
            return "revoked"
        d, handling = running
        if d.task is None or handling is None:
            return "revoked; it is running and cannot be terminated yet: it runs to its end"
        in_thread = not asyncio.iscoroutinefunction(d.task.run_callable()) and self.worker.settings.pool != "processes"
        self.worker._settle(d, "ack", "revoked: terminated")
        # async def: cancelled with its handler; processes pool: its child is killed when the handler is cancelled.
        handling.cancel()
        if in_thread:
            self.worker.executor.terminate_thread(task_id)
        await self.worker.hooks.run("after_skip", d, "REVOKED", reverse=True)
        log.info("%s revoked: terminated", d.label)
        return "terminated"
