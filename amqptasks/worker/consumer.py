"""The worker: consume queues, run tasks, then acknowledge, retry or dead-letter each message.

One asyncio loop per process. Deliveries are handled concurrently up to ``concurrency``; what the broker
prefetched beyond that waits here, unstarted, and is handed back at once on a warm shutdown. Every
message is settled exactly once (ack, reject to the dead-letter exchange, or requeue), and nothing a
message contains can crash the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aio_pika
import aio_pika.abc

from amqptasks.broker.aio import open_robust
from amqptasks.control.worker import WorkerControl
from amqptasks.errors import Ignore, Reject, Retry
from amqptasks.message.errors import MessageError
from amqptasks.tasks.dispatch import decode, find_task
from amqptasks.tasks.sending import prepare
from amqptasks.worker import events
from amqptasks.worker.delivery import Delivery
from amqptasks.worker.execution import Executor
from amqptasks.worker.middleware import Hooks, Middleware
from amqptasks.worker.request import Request
from amqptasks.worker.retrying import countdown_for, should_retry
from amqptasks.worker.transport import Incoming, Transport

if TYPE_CHECKING:
    from amqptasks.app import App

log = logging.getLogger("amqptasks.worker")

#: A redelivered message on a classic queue counts its redeliveries in this header (quorum queues count
#: with x-delivery-count and enforce x-delivery-limit themselves).
REDELIVERIES_HEADER = "x-amqptasks-redeliveries"
#: Early by less than this, a message runs now rather than making another trip through the delay tiers.
ETA_TOLERANCE = 0.05


@dataclass
class WorkerSettings:
    queues: Sequence[str]
    concurrency: int = 8
    prefetch: int | None = None  # default: concurrency * 4
    hostname: str = field(default_factory=lambda: f"amqptasks@{socket.gethostname()}")
    burst: bool = False
    #: Seconds a warm shutdown waits for running tasks before going cold.
    grace: float = 30.0
    #: Classic queues: a message redelivered more often than this (it killed its worker) is dead-lettered.
    max_redeliveries: int = 5
    #: Expired tasks are dropped (acked) by default; True dead-letters them instead.
    dead_letter_expired: bool = False
    middleware: Sequence[Middleware] = ()
    #: Where sync tasks run: "threads", "asyncio" (also threads) or "processes" (see worker/execution.py).
    pool: str = "threads"
    #: processes pool: a child is replaced after this many tasks (None: never).
    max_tasks_per_child: int | None = None
    #: Serve Prometheus metrics on this port (0: any free port); publish task events to amqptasks.events.
    metrics_port: int | None = None
    events: bool = False


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
        #: Tasks running now, by task id: their delivery, and the asyncio task handling it (for control).
        self.active: dict[str, tuple[Delivery, asyncio.Task[Any] | None]] = {}
        self.executor = Executor(
            settings.concurrency, pool=settings.pool, app=app, max_tasks_per_child=settings.max_tasks_per_child
        )
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._inflight: set[asyncio.Task[None]] = set()
        self._running = 0
        self._stop = asyncio.Event()
        self._gone_cold = asyncio.Event()
        self._cold = False
        self._stopping = False
        self._transport: Transport | None = None
        #: For control commands, the burst watch and publishing: consuming has its own (see transport.py).
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None
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
        prefetch = self.settings.prefetch or self.settings.concurrency * 4
        loop = asyncio.get_running_loop()
        # Control first: it reads back the stored revocations, which every message is checked against.
        self._connection = await open_robust(self.app.config.broker, f"{name} (control)")
        await self.control.start(self._connection)
        self._transport = Transport(self.app.config.broker, name, self.settings.queues, prefetch, self._on_batch, loop)
        await self._transport.start()
        log.info("ready: consuming %s", ", ".join(self.settings.queues))

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

    async def _slot(self) -> bool:
        """A free execution slot; False once a shutdown starts: a message still waiting then goes back at once."""
        if self._stopping:
            return False
        if not self._slots.locked():  # the usual case: no futures, no waiting
            await self._slots.acquire()
            return True
        acquire = asyncio.ensure_future(self._slots.acquire())
        stop = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait({acquire, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not acquire.done():
            acquire.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await acquire  # a slot granted just before the cancel is given back by the semaphore itself
        if acquire.cancelled():
            return False
        if self._stopping:
            self._slots.release()
            return False
        return True

    async def _burst_watch(self) -> None:
        channel = await self._connection.channel() if self._connection else None
        idle_since: float | None = None
        while channel is not None:
            await asyncio.sleep(0.2)
            try:
                counts = await self._ready_counts(channel)
            except Exception:  # reconnecting: ask again on the next tick
                idle_since = None
                continue
            if self._inflight or any(counts):
                idle_since = None
            elif idle_since is None:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > 0.5:
                log.info("burst: queues drained after %d task(s)", self.processed)
                self.stop()
                return

    async def _ready_counts(self, channel: aio_pika.abc.AbstractRobustChannel) -> list[int]:
        # robust=False: a robust channel answers repeated passive declares from a cache (aio-pika 10), so the
        # count would never change; this asks the broker every time.
        counts = []
        for name in self.settings.queues:
            queue = await channel.declare_queue(name, passive=True, robust=False)
            counts.append(queue.declaration_result.message_count or 0)
        return counts

    # --- one message ----------------------------------------------------------------------------------

    def _on_batch(self, batch: list[Incoming]) -> None:
        for raw in batch:
            task = asyncio.ensure_future(self._process(Delivery(raw, raw.queue)))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _process(self, d: Delivery) -> None:
        try:
            await self._handle(d)
        except Exception as exc:  # a bug of ours must not crash the loop, nor lose the message
            log.exception("%s: internal error; dead-lettering it", d.label)
            self._settle(d, "reject", f"internal error: {exc!r}")
        finally:
            self.processed += 1
            await self.hooks.run("after_process", d, reverse=True)

    async def _handle(self, d: Delivery) -> None:
        raw = d.raw
        try:
            d.message = decode(raw.body, raw.headers, raw.content_type, raw.content_encoding, raw.correlation_id,
                               raw.reply_to)  # fmt: skip
        except MessageError as exc:
            await self._reject(d, exc.reason, str(exc))
            return
        if self.control.is_revoked(d.message.id):
            log.info("%s revoked: acknowledged, not run", d.label)
            self._settle(d, "ack", "revoked")
            await self.hooks.run("after_skip", d, "REVOKED", reverse=True)
            return
        await self.hooks.run("after_receive", d, reverse=True)
        m = d.message
        # The usual message (first delivery, no expiry, no eta) needs none of the three checks' coroutines.
        if (raw.redelivered or m.expires is not None or m.eta is not None) and (
            await self._redelivered_too_often(d) or await self._expired(d) or await self._early(d)
        ):
            return
        try:
            d.task = find_task(self.app, d.message)
        except MessageError as exc:
            await self._reject(d, exc.reason, str(exc))
            return
        if not await self._slot():
            self._settle(d, "requeue", "shutdown before it started")
            return
        if self._transport is None or self._transport.is_stale(d.raw):
            # Its channel closed while it waited (connection lost, channel closed by the broker): the broker
            # has already requeued it and will deliver it again; running it here would run it twice.
            self._slots.release()
            d.settled = "requeue"
            log.info("%s: its channel closed before it started; the broker redelivers it", d.label)
            return
        try:
            await self._execute(d)
        finally:
            self._slots.release()

    async def _execute(self, d: Delivery) -> None:
        assert d.message is not None and d.task is not None
        message, options = d.message, d.task.options
        d.request = self._request(d)
        if not options.acks_late:
            self._settle(d, "ack", "acks_late=False: acknowledged before running")
        await self.hooks.run("before_execute", d)
        d.started = time.monotonic()
        self._running += 1
        self.active[message.id] = (d, asyncio.current_task())
        try:
            soft, hard = _time_limits(message.timelimit, options.soft_time_limit, options.time_limit)
            result = await self.executor.run(d.task.run_callable(), message.args, dict(message.kwargs), d.request,
                                             soft, hard)  # fmt: skip
        except Ignore:
            self._settle(d, "ack", "ignored")
        except Reject as exc:
            self._settle(d, "requeue" if exc.requeue else "reject", exc.reason or "rejected by the task")
            await self.hooks.run("after_reject", d, exc.reason or "rejected by the task", reverse=True)
        except Exception as exc:
            await self._failed(d, exc)
        else:
            await self.hooks.run("after_success", d, result, reverse=True)
            self._settle(d, "ack", "succeeded")
        finally:
            self._running -= 1
            self.active.pop(message.id, None)

    async def _failed(self, d: Delivery, exc: BaseException) -> None:
        assert d.message is not None and d.task is not None
        options, retries = d.task.options, d.message.retries
        if should_retry(options, exc, retries):
            explicit = exc.countdown if isinstance(exc, Retry) else None
            countdown = countdown_for(options, retries, explicit)
            await self.hooks.run("before_retry", d, exc, countdown, reverse=True)
            try:
                await self._publish_retry(d, countdown)
            except Exception as publish_error:  # could not publish the retry: requeue, never lose it
                log.error("%s: retry could not be published (%s); requeued", d.label, publish_error)
                self._settle(d, "requeue", "retry publish failed")
                return
            await self.hooks.run("after_retry", d, exc, countdown, reverse=True)
            self._settle(d, "ack", "retried")
            return
        cause = exc.exc if isinstance(exc, Retry) and exc.exc is not None else exc
        await self.hooks.run("after_failure", d, cause, reverse=True)
        self._settle(d, "reject", f"failed: {type(cause).__name__}: {cause}")

    async def _publish_retry(
        self, d: Delivery, countdown: float, *, retries_delta: int = 1, redeliveries: int | None = None
    ) -> None:
        """The same task again as a fresh message (no x-death), confirmed before the original is acked.

        A retry starts with no redelivery count (the task ran to its end); a counted copy carries *redeliveries*.
        """
        assert d.message is not None
        m = d.message
        headers = {k: v for k, v in m.extra_headers.items() if k != REDELIVERIES_HEADER}
        if redeliveries is not None:
            headers[REDELIVERIES_HEADER] = redeliveries
        options = d.task.options if d.task else self.app.task_options(m.task)
        delays = self.app.config.delays.enabled
        if countdown > 0 and not delays:
            log.warning("%s: retrying at once: countdown %.1f s needs 'delays: {enabled: true}'", d.label, countdown)
            countdown = 0
        call_options: dict[str, Any] = {
            "task_id": m.id, "retries": m.retries + retries_delta, "root_id": m.root_id, "parent_id": m.parent_id,
            "headers": headers,
            "expires": m.expires, "link": list(m.callbacks) or None, "link_error": list(m.errbacks) or None,
            "priority": d.raw.priority, "group_id": m.group, "group_index": m.group_index, "reply_to": m.reply_to,
            "soft_time_limit": m.timelimit[0], "time_limit": m.timelimit[1],
            "countdown": countdown if countdown > 0 else None, **d.destination(),
        }  # fmt: skip
        prepared = prepare(options, m.args, m.kwargs, call_options, self.app.send_settings)
        publisher = await self.app.aio_publisher()
        await publisher.publish(prepared.envelope)

    async def _redelivered_too_often(self, d: Delivery) -> bool:
        raw, headers = d.raw, d.raw.headers or {}
        if not raw.redelivered or "x-delivery-count" in headers:
            return False
        previous = headers.get(REDELIVERIES_HEADER, 0)
        count = (previous if isinstance(previous, int) else 0) + 1
        if count > self.settings.max_redeliveries:
            await self._reject(d, "poison", f"redelivered {count} times (it may kill its worker)")
            return True
        await self._publish_retry(d, 0, retries_delta=0, redeliveries=count)  # counted copy to the back of the queue
        self._settle(d, "ack", f"redelivered: counted ({count}/{self.settings.max_redeliveries})")
        return True

    async def _expired(self, d: Delivery) -> bool:
        expires = d.message.expires if d.message else None
        if expires is None or expires > datetime.now(UTC):
            return False
        if self.settings.dead_letter_expired:
            await self._reject(d, "expired", f"expired at {expires.isoformat()}")
        else:
            log.info("%s expired at %s: dropped", d.label, expires.isoformat())
            self._settle(d, "ack", "expired")
            await self.hooks.run("after_skip", d, "EXPIRED", reverse=True)
        return True

    async def _early(self, d: Delivery) -> bool:
        """A message before its eta (e.g. from a Celery client) goes back through the delay tiers."""
        eta = d.message.eta if d.message else None
        if eta is None:
            return False
        wait = (eta - datetime.now(UTC)).total_seconds()
        if wait <= ETA_TOLERANCE:
            return False
        if not self.app.config.delays.enabled:
            log.warning("%s: its eta is %.1f s ahead, but without 'delays: {enabled: true}' it cannot wait: runs now",
                        d.label, wait)  # fmt: skip
            return False
        await self._publish_retry(d, wait, retries_delta=0)
        log.info("%s: %.1f s before its eta: sent back through the delay tiers", d.label, wait)
        self._settle(d, "ack", "delayed until its eta")
        return True

    async def _reject(self, d: Delivery, reason: str, detail: str) -> None:
        # RabbitMQ records only "rejected" in x-death: the log line is where the why is kept.
        self._settle(d, "reject", detail)
        await self.hooks.run("after_reject", d, f"{reason}: {detail}", reverse=True)

    def _settle(self, d: Delivery, how: str, why: str) -> None:
        # No I/O here: the transport sends it (batched), so no coroutine on the per-message path.
        if d.settled is not None:
            return
        d.settled = how
        if self._transport is None or self._transport.is_stale(d.raw):
            # Its channel is gone: the broker has requeued it, and it will run again (at least once).
            log.warning("%s: could not %s: the connection was lost; the broker will redeliver it", d.label, how)
            return
        self._transport.settle(d.raw, how)
        log.debug("%s: %s (%s)", d.label, how, why)

    def _request(self, d: Delivery) -> Request:
        m, raw = d.message, d.raw
        assert m is not None
        return Request(
            id=m.id, task=m.task, args=m.args, kwargs=m.kwargs, retries=m.retries,
            delivery_info={"exchange": d.exchange, "routing_key": raw.routing_key, "queue": d.queue,
                           "priority": raw.priority, "redelivered": raw.redelivered},
            headers=dict(raw.headers or {}), reply_to=m.reply_to, eta=m.eta, expires=m.expires,
            hostname=self.settings.hostname, redelivered=bool(raw.redelivered), root_id=m.root_id,
            parent_id=m.parent_id, message=m,
        )  # fmt: skip


def _time_limits(header: Sequence[Any], soft: float | None, hard: float | None) -> tuple[float | None, float | None]:
    """The message's ``timelimit`` [soft, hard] (``apply_async(time_limit=...)``, Celery clients) over the task's."""

    def given(value: Any) -> float | None:
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) and value > 0 else None

    return given(header[0]) or soft, given(header[1]) or hard
