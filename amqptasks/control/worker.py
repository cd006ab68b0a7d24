"""The worker's side of remote control (Celery's pidbox: control/pidbox.py), and the monitoring it switches on
(events, metrics).

Each worker consumes its own exclusive, auto-delete queue ``<hostname>.celery.pidbox`` bound to the
``celery.pidbox`` fanout exchange, runs the commands meant for it (control/commands.py) and replies
``{hostname: reply}`` to the command's ``reply_to`` exchange and routing key with its ``ticket``: so
``celery inspect``, ``celery control``, ``celery status`` and Flower see it as they see Celery's workers.

``revoke`` remembers the id (:class:`RevokedIds`): a revoked message is acknowledged and never run when it
arrives. Revocations are also stored on the broker (control/stored.py): at start, before answering commands, a
worker reads back those of the last 3 hours, and it keeps reading them while it runs.

With ``terminate``, a running task is stopped and its message acknowledged, its state REVOKED: an ``async def``
task is cancelled; a processes-pool child running it is killed (and replaced); a thread gets ``Terminated`` raised
in it, at its next Python bytecode (not while it is blocked in C, e.g. in ``time.sleep``).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
import uuid
from typing import TYPE_CHECKING

import aio_pika
import aio_pika.abc

from amqptasks.control import pidbox
from amqptasks.control.commands import Commands
from amqptasks.control.revoked import RevokedIds
from amqptasks.control.stored import StoredRevocations
from amqptasks.monitor.events import TaskEvents
from amqptasks.monitor.metrics import Metrics
from amqptasks.worker.middleware import Middleware

if TYPE_CHECKING:
    from amqptasks.broker.memory import MemoryBroker
    from amqptasks.worker.consumer import Worker
    from amqptasks.worker.delivery import Delivery

log = logging.getLogger("amqptasks.worker")


class _Totals(Middleware):
    """Tasks accepted per name, for ``stats`` (Celery's ``total``)."""

    def __init__(self, totals: collections.Counter[str]) -> None:
        self.totals = totals

    def before_execute(self, delivery: Delivery) -> None:
        if delivery.message is not None:
            self.totals[delivery.message.task] += 1


class WorkerControl:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.revoked = RevokedIds()
        self.started = time.time()
        self.totals: collections.Counter[str] = collections.Counter()
        self.commands = Commands(self)
        self.events = TaskEvents(worker) if worker.settings.events else None
        self.metrics = Metrics(worker) if worker.settings.metrics_port is not None else None
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self._memory: MemoryBroker | None = None
        name = worker.app.config.broker.connection_name or f"amqptasks worker {worker.settings.hostname}"
        self.stored = StoredRevocations(worker.app.config, f"{name} (revocations)", self._on_stored_revocation)

    def middleware(self) -> list[Middleware]:
        return [m for m in (_Totals(self.totals), self.events, self.metrics) if m is not None]

    def is_revoked(self, task_id: str) -> bool:
        if self._memory is not None and task_id not in self.revoked:
            at = self._memory.revocations.get(task_id)
            if at is not None:
                self._on_stored_revocation(task_id, at)
        return task_id in self.revoked

    def start_memory(self, broker: MemoryBroker) -> None:
        """memory://: revocations are stored in the in-process broker (no control queue: every sender is here)."""
        self._memory = broker

    async def start(self, connection: aio_pika.abc.AbstractRobustConnection) -> None:
        # First: a message checked against revoked ids must find every revocation already stored. On a connection
        # of its own, which a RabbitMQ 3.10 stream bug may close (see control/stored.py).
        await self.stored.start()
        channel = self._channel = await connection.channel()
        exchange = await channel.declare_exchange(pidbox.EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=False)
        # One queue per process (its name made unique), not Celery's one per name: the processes of
        # 'worker --processes N' share a name, and each answers for itself (worker/names.py warns of other workers
        # sharing it).
        name = pidbox.queue_name(f"{self.worker.settings.hostname}.{uuid.uuid4().hex[:8]}")
        queue = await channel.declare_queue(name, exclusive=True, auto_delete=True,
                                            arguments=dict(pidbox.QUEUE_ARGUMENTS))  # fmt: skip
        await queue.bind(exchange)
        await queue.consume(self._on_command, no_ack=True)
        if self.events is not None:
            await self.events.start(connection)
        if self.metrics is not None:
            self.metrics.start(self.worker.settings.metrics_port or 0)

    async def stop(self) -> None:
        if self.events is not None:
            await self.events.stop()
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

    # --- commands -----------------------------------------------------------------------------------------

    async def _on_command(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        hostname = self.worker.settings.hostname
        try:
            command = pidbox.parse(json.loads(message.body))
        except ValueError as exc:
            log.warning("control: ignoring a malformed command (%s): %r", exc, message.body[:200])
            return
        if not command.is_for(hostname) or pidbox.expired(message.headers):
            return
        handler = self.commands.find(command.method)
        try:
            if handler is None:
                raise ValueError(f"unknown command {command.method!r}")
            reply = await handler(**command.arguments)
        except Exception as exc:  # a bad command must never harm the worker
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        if command.reply_to is None or self._channel is None:
            return
        body = json.dumps({hostname: reply}, default=str).encode()
        out = aio_pika.Message(body, content_type="application/json", content_encoding="utf-8",
                               headers={"ticket": command.ticket, "clock": 0},
                               delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT)  # fmt: skip
        try:
            exchange = await self._channel.get_exchange(str(command.reply_to["exchange"]), ensure=False)
            await exchange.publish(out, routing_key=str(command.reply_to["routing_key"]), mandatory=False)
        except Exception:  # the sender may have gone: nothing to do
            log.debug("control: reply to %s failed", command.reply_to, exc_info=True)

    async def revoke(self, task_id: str, terminate: bool = False) -> str:
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
