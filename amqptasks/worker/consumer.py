"""The worker: consume queues, run tasks, then acknowledge, retry or dead-letter each message.

One asyncio loop per process. Deliveries are handled concurrently up to ``concurrency``; what the broker
prefetched beyond that waits here, unstarted, and is handed back at once on a warm shutdown. Every
message is settled exactly once (ack, reject to the dead-letter exchange, or requeue), and nothing a
message contains can crash the loop.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aio_pika
import aio_pika.abc

from amqptasks.broker.aio import open_robust
from amqptasks.broker.memory import broker_for, is_memory_url
from amqptasks.constants import REDELIVERIES_HEADER
from amqptasks.control.worker import WorkerControl
from amqptasks.errors import Ignore, Reject
from amqptasks.message.errors import MessageError
from amqptasks.tasks.dispatch import decode, find_task
from amqptasks.worker import events
from amqptasks.worker.admission import Admission, journal_key
from amqptasks.worker.burst import drained
from amqptasks.worker.delivery import Delivery
from amqptasks.worker.execution import Executor, time_limits
from amqptasks.worker.failure import failed, succeeded
from amqptasks.worker.journal import Journal
from amqptasks.worker.memory_transport import MemoryTransport
from amqptasks.worker.middleware import Hooks, Middleware
from amqptasks.worker.names import warn_if_shared
from amqptasks.worker.processes import WorkerLostError
from amqptasks.worker.request import request_for
from amqptasks.worker.transport import Incoming, Transport

if TYPE_CHECKING:
    from amqptasks.app import App

__all__ = ["Worker", "WorkerSettings"]

log = logging.getLogger("amqptasks.worker")

#: The default prefetch per task slot (256 per process with the default 8 slots). Short tasks need a deep
#: prefetch: every ack takes a round trip through a busy broker before the next delivery comes, and bigger
#: batches per socket read cost less per message (measured on 2 cores, 2 processes: prefetch 32 drained
#: 6-7k tasks/s, 128 about 9-10k, 256 and 500 11-13k, on a machine shared with other work). It stays within
#: the 100-300 RabbitMQ suggests. The price is fairness: a process holds up to this many messages that another
#: idle worker cannot take. For long tasks give ``--prefetch`` (1 to 2 x concurrency).
PREFETCH_PER_SLOT = 32


@dataclass
class WorkerSettings:
    queues: Sequence[str]
    concurrency: int = 8
    #: Messages prefetched per process; None: ``concurrency x`` :data:`PREFETCH_PER_SLOT`.
    prefetch: int | None = None
    hostname: str = field(default_factory=lambda: f"amqptasks@{socket.gethostname()}")
    burst: bool = False
    #: Seconds a warm shutdown waits for running tasks before going cold.
    grace: float = 30.0
    #: A task charged with killing its worker process more often than this is dead-lettered as worker-lost.
    max_redeliveries: int = 5
    #: Expired tasks are dropped (acked) by default; True dead-letters them instead.
    dead_letter_expired: bool = False
    middleware: Sequence[Middleware] = ()
    #: Where sync tasks run: "threads", "asyncio" (also threads) or "processes" (see worker/execution.py).
    pool: str = "threads"
    #: processes pool: a child is replaced after this many tasks (None: never).
    max_tasks_per_child: int | None = None
    #: Serve Prometheus metrics on this port (0: any free port); publish Celery-format events to celeryev.
    metrics_port: int | None = None
    events: bool = False

    @property
    def prefetch_count(self) -> int:
        return self.prefetch or self.concurrency * PREFETCH_PER_SLOT


class Worker:
    def __init__(self, app: App, settings: WorkerSettings) -> None:
        self.app = app
        self.settings = settings
        #: Broadcast control (inspect, rate_limit, revoke), and the events and metrics it switches on.
        self.control = WorkerControl(self)
        self.middleware: list[Middleware] = [
            *events.builtin_middleware(app),
            *self.control.middleware(),
            *settings.middleware,
        ]
        self.hooks = Hooks(self.middleware)
        #: The redelivery, expiry and eta checks a message passes before it runs.
        self._admission = Admission(app, settings, self.hooks, self._settle, self._flush)
        #: Bigger bodies are dead-lettered unread (broker.max_message_size; compressed ones may inflate 16x).
        self._max_message_size = app.config.broker.max_message_size
        #: Tasks running now, by task id: their delivery, and the asyncio task handling it (for control).
        self.active: dict[str, tuple[Delivery, asyncio.Task[Any] | None]] = {}
        self.executor = Executor(
            settings.concurrency, pool=settings.pool, app=app, max_tasks_per_child=settings.max_tasks_per_child
        )
        #: Deliveries waiting for a free slot (prefetched beyond ``concurrency``), in arrival order. A message
        #: is handled only once a slot is free: no coroutine, future or lock per waiting message.
        self._waiting: collections.deque[Delivery] = collections.deque()
        self._free = settings.concurrency
        #: Deliveries being handled, and the slots each occupies.
        self._inflight: dict[asyncio.Task[None], int] = {}
        self._running = 0
        self._stop = asyncio.Event()
        self._gone_cold = asyncio.Event()
        self._cold = False
        self._stopping = False
        self._transport: Transport | MemoryTransport | None = None
        #: For control commands, the burst watch and publishing: consuming has its own (see transport.py).
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None
        #: Which tasks this process has started: what tells a crasher from the innocents after a crash.
        self.journal: Journal | None = None
        self.processed = 0

    @property
    def connected(self) -> bool:
        """Connected to the broker and consuming (False while reconnecting)."""
        return self._transport is not None and self._transport.connected

    @property
    def running(self) -> int:
        """Tasks running now; after :meth:`run`, those a cold shutdown (or the grace period's end) left behind."""
        return self._running

    # --- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, check every queue exists, and start consuming."""
        name = self.app.config.broker.connection_name or f"amqptasks worker {self.settings.hostname}"
        prefetch = self.settings.prefetch_count
        loop = asyncio.get_running_loop()
        if is_memory_url(self.app.config.broker.url):
            await self._start_memory(prefetch, loop)  # in-process: nothing outlives a crash, no journal
            return
        self.journal = Journal(self.settings.hostname)
        self._admission.crashes.claimer = self.journal.path.name
        # Control first: it reads back the stored revocations, which every message is checked against.
        self._connection = await open_robust(self.app.config.broker, f"{name} (control)")
        await self.control.start(self._connection)
        self._transport = Transport(self.app.config.broker, name, self.settings.queues, prefetch, self._on_batch, loop)
        await self._transport.start()
        self.journal.ready()
        log.info("ready: consuming %s", ", ".join(self.settings.queues))
        if not self.settings.burst:  # a burst worker is gone before the others could answer
            warn_if_shared(self.app.config, self.settings.hostname)

    async def _start_memory(self, prefetch: int, loop: asyncio.AbstractEventLoop) -> None:
        """memory://: the in-process broker's transport; control reads its stored revocations (no connection)."""
        broker = broker_for(self.app.config.broker.url)
        self.control.start_memory(broker)
        transport = MemoryTransport(broker, self.settings.queues, prefetch, self._on_batch, loop)
        self._transport = transport
        await transport.start()

    @property
    def transport(self) -> Transport | MemoryTransport | None:
        return self._transport

    async def idle(self) -> None:
        """Until no message is in hand (what a driver of the worker such as ``amqptasks.testing.drain`` waits for)."""
        while self._inflight:
            await asyncio.wait(set(self._inflight))

    async def run(self) -> None:
        """Consume until :meth:`stop` (or, in burst mode, until the queues are drained)."""
        watcher: asyncio.Future[None] | None = None
        try:
            await self.start()  # inside the try: a failed start (unknown queue) still closes the connection
            watcher = asyncio.ensure_future(self._burst_watch()) if self.settings.burst else None
            await self._stop.wait()
        finally:
            if watcher is not None:
                watcher.cancel()
            await self._shutdown()

    def stop(self, *, cold: bool = False) -> None:
        """Warm: stop consuming, hand back unstarted messages, let running tasks finish. Cold: stop now."""
        self._cold = self._cold or cold or self._stopping  # a second request goes cold
        self._stopping = True
        self._start_waiting()  # each goes straight back to its queue
        self._stop.set()
        if self._cold:
            self._gone_cold.set()

    async def _shutdown(self) -> None:
        if self._transport is not None:
            await self._transport.cancel()
        if not self._cold and self._inflight:
            log.info("warm shutdown: waiting up to %g s for %d running task(s)", self.settings.grace, self._running)
            await self._wait_inflight(self.settings.grace)
            if self._inflight:
                log.warning("%s: %d task(s) still running; their messages go back to the queue",
                            "cold shutdown" if self._cold else "grace period over", self._running)  # fmt: skip
        self.executor.shutdown(wait=False)
        await self.control.stop()
        if self._transport is not None:
            # Sends the settlements still held; closing returns every unsettled message to its queue.
            await self._transport.close()
        if self._connection is not None:
            await self._connection.close()
        if self.journal is not None:
            self.journal.close()  # a clean exit: what it abandoned did not kill it

    async def _wait_inflight(self, timeout: float) -> None:
        """Until every message in hand is settled, *timeout* passes, or a second stop request goes cold."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        cold = asyncio.ensure_future(self._gone_cold.wait())
        try:
            while self._inflight and not cold.done() and (remaining := deadline - loop.time()) > 0:
                await asyncio.wait({*self._inflight, cold}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        finally:
            cold.cancel()

    @property
    def held(self) -> int:
        """Messages in this process's hands: being handled, or prefetched and waiting for a slot."""
        return len(self._inflight) + len(self._waiting)

    async def _burst_watch(self) -> None:
        if self._connection is not None:
            await drained(self._connection, self.settings.queues, lambda: self.held > 0)
            log.info("burst: queues drained after %d task(s)", self.processed)
            self.stop()

    # --- one message ----------------------------------------------------------------------------------

    def _on_batch(self, batch: list[Incoming]) -> None:
        self._waiting.extend(Delivery(raw, raw.queue) for raw in batch)
        self._start_waiting()

    def _slots_for(self, d: Delivery) -> int:
        """How many of the ``concurrency`` slots a delivery occupies while it is handled: all of them for one
        that may have killed its worker (redelivered, or a counted copy; see worker/journal.py). Its charge then
        runs with no task beside it that could crash the process between the counted copy's confirm and the
        original's ack, and the copy runs alone: if it kills the process again, the journal names it alone, and
        no innocent beside it is charged. (A child of the processes pool dies alone anyway.)"""
        raw = d.raw
        if raw.redelivered or (raw.headers is not None and REDELIVERIES_HEADER in raw.headers):
            return 1 if self.settings.pool == "processes" and not raw.redelivered else self.settings.concurrency
        return 1

    def _start_waiting(self) -> None:
        """Handle waiting deliveries, in order, while their slots are free; once stopping, all of them (each goes
        straight back to its queue, taking no slot)."""
        waiting = self._waiting
        while waiting:
            slots = 0 if self._stopping else self._slots_for(waiting[0])
            if slots > self._free:
                return
            self._free -= slots
            if slots > 1:
                # It runs alone and may kill the process: the acks of the tasks that just finished go first.
                self._flush()
            task = asyncio.ensure_future(self._process(waiting.popleft()))
            self._inflight[task] = slots
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._free += self._inflight.pop(task)
        if self._waiting:
            self._start_waiting()

    async def _process(self, d: Delivery) -> None:
        try:
            await self._handle(d)
        except Exception as exc:  # a bug of ours must not crash the loop, nor lose the message
            log.exception("%s: internal error; dead-lettering it", d.label)
            self._settle(d, "reject", f"internal error: {exc!r}")
        finally:
            self.processed += 1
            if (pending := self.hooks.fire("after_process", d, reverse=True)) is not None:
                await pending

    async def _handle(self, d: Delivery) -> None:
        raw = d.raw
        try:
            d.message = decode(raw.body, raw.headers, raw.content_type, raw.content_encoding, raw.correlation_id,
                               raw.reply_to, self._max_message_size)  # fmt: skip
        except MessageError as exc:
            await self._admission.reject(d, exc.reason, exc.detail)
            return
        if self.control.is_revoked(d.message.id):
            log.info("%s revoked: acknowledged, not run", d.label)
            self._settle(d, "ack", "revoked")
            await self.hooks.run("after_skip", d, "REVOKED", reverse=True)
            return
        if (pending := self.hooks.fire("after_receive", d, reverse=True)) is not None:
            await pending
        m, checks = d.message, self._admission
        # The usual message (first delivery, no expiry, no eta) needs none of the three checks' coroutines.
        if (raw.redelivered or m.expires is not None or m.eta is not None) and (
            await checks.charge_redelivery(d) or await checks.expired(d) or await checks.early(d)
        ):
            return
        try:
            d.task = find_task(self.app, d.message)
        except MessageError as exc:
            await checks.reject(d, exc.reason, exc.detail)
            return
        if self._stopping:
            self._settle(d, "requeue", "shutdown before it started")
            return
        if self._transport is None or self._transport.is_stale(d.raw):
            # Its channel closed while it waited (connection lost, channel closed by the broker): the broker
            # has already requeued it and will deliver it again; running it here would run it twice.
            d.settled = "requeue"
            log.info("%s: its channel closed before it started; the broker redelivers it", d.label)
            return
        await self._execute(d)

    async def _execute(self, d: Delivery) -> None:
        assert d.message is not None and d.task is not None
        message, options = d.message, d.task.options
        d.request = request_for(d, self.settings.hostname)
        if not options.acks_late:
            self._settle(d, "ack", "acks_late=False: acknowledged before running")
        if (pending := self.hooks.fire("before_execute", d)) is not None:
            await pending
        d.started = time.monotonic()
        self._running += 1
        self.active[message.id] = (d, asyncio.current_task())
        journal, key = self.journal, journal_key(message.id, message.extra_headers)
        if journal is not None:
            journal.started(key)
        try:
            soft, hard = time_limits(message.timelimit, options.soft_time_limit, options.time_limit)
            result = await self.executor.run(d.task.run_callable(), message.args, dict(message.kwargs), d.request,
                                             soft, hard)  # fmt: skip
        except Ignore:
            self._settle(d, "ack", "ignored")
        except Reject as exc:
            self._settle(d, "requeue" if exc.requeue else "reject", exc.reason or "rejected by the task")
            await self.hooks.run("after_reject", d, exc.reason or "rejected by the task", reverse=True)
        except WorkerLostError as exc:  # its pool child process died under it (processes pool)
            await self._admission.charge(d, f"worker {self.settings.hostname}: {exc}")
        except Exception as exc:
            await failed(d, exc, self.app, self.hooks, self._settle)
        else:
            if (pending := self.hooks.fire("after_success", d, result, reverse=True)) is not None:
                await pending
            if d.handoff_error is None:  # the usual case, without a coroutine
                self._settle(d, "ack", "succeeded")
            else:
                await succeeded(d, self.app, self._settle)
        finally:
            if journal is not None:
                journal.finished(key)
            self._running -= 1
            self.active.pop(message.id, None)

    def _flush(self) -> None:
        if isinstance(self._transport, Transport):
            self._transport.flush()

    def _settle(self, d: Delivery, how: str, why: str) -> None:
        # No I/O here: the transport sends it (batched), so no coroutine on the per-message path.
        if d.settled is not None:
            return
        d.settled = how
        if self._transport is None or self._transport.is_stale(d.raw):
            # Its channel is gone: the broker has requeued it, and it will run again (at least once).
            # One line per message would be dozens per cut: the transport's "connection lost" line says it once.
            log.debug("%s: could not %s: the connection was lost; the broker will redeliver it", d.label, how)
            return
        self._transport.settle(d.raw, how)
        log.debug("%s: %s (%s)", d.label, how, why)
