"""Run workers in this process or in N forked ones: logging, signals, the startup banner."""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import importlib.util
import json
import logging
import os
import signal
import sys
from collections.abc import Coroutine, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from amqptasks.broker.connection import open_blocking, tls_options
from amqptasks.broker.logs import quiet_clients
from amqptasks.broker.memory import is_memory_url
from amqptasks.broker.url import BrokerURL, mask_url
from amqptasks.constants import ENV_EVENT_LOOP, REVOKED_STREAM, REVOKED_STREAM_ARGUMENTS, dlq_name, is_delay_name
from amqptasks.errors import AmqpTasksError
from amqptasks.topology.desired import desired
from amqptasks.topology.observe import Prober
from amqptasks.worker.consumer import Worker, WorkerSettings
from amqptasks.worker.supervise import Supervisor
from amqptasks.worker.tasklog import TASKS_LOGGER
from amqptasks.worker.transport import missing_queue

if TYPE_CHECKING:
    from amqptasks.app import App

T = TypeVar("T")
_PR_SET_PDEATHSIG = 1
log = logging.getLogger("amqptasks.worker")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            # Task lines name their event (received, started, succeeded...); any other line is a plain "log".
            "event": getattr(record, "task_event", "log"),
        }
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data)


def _no_transport_tracebacks(record: logging.LogRecord) -> bool:
    """pika and aiormq log a failed connection attempt (a refused TLS certificate, a node that went away) with
    its traceback; the worker says itself what failed and what to do, so their line is kept without it."""
    if record.name.startswith(("pika", "aiormq", "aio_pika")):
        record.exc_info, record.exc_text = None, None
    return True


def setup_logging(level: str, fmt: str, log_tasks: bool = False) -> None:
    """The root logger at *level*; the per-task progress lines (:mod:`~amqptasks.worker.tasklog`) only with
    *log_tasks* or at debug level."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_no_transport_tracebacks)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("[%(asctime)s %(levelname)s/%(processName)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    quiet_clients(debug=level.upper() == "DEBUG")  # the worker says what happened to its connections itself
    if log_tasks:  # asked for: shown whatever the level
        logging.getLogger(TASKS_LOGGER).setLevel(logging.INFO)
    else:
        logging.getLogger(TASKS_LOGGER).setLevel(logging.NOTSET if level.upper() == "DEBUG" else logging.WARNING)


def banner(app: App, settings: WorkerSettings, pool: str, processes: int) -> str:
    want = desired(app.config.topology, app.config.delays)
    lines = [
        f"amqptasks worker {settings.hostname}"
        + (
            f" (processes {', '.join(child_settings(settings, i + 1).hostname for i in range(processes))})"
            if processes > 1
            else ""
        ),
        f"  broker:  {mask_url(app.config.broker.url)}",
        f"  pool:    {pool}, concurrency {settings.concurrency} x {processes} process(es) on {event_loop()}, "
        f"prefetch {settings.prefetch_count}",
        "  queues:",
    ]
    for name in settings.queues:
        bindings = [
            f"{b.source}[{b.routing_key or '*'}]"
            for b in want.bindings
            if b.destination == name and not is_delay_name(b.source)
        ]
        queue = want.queue(name)
        dlx = queue.dead_letter_exchange if queue else None
        dead = f"; dead letters -> {dlx}" + (f" -> {dlq_name(name)}" if want.queue(dlq_name(name)) else "")
        lines.append(f"    {name} <- {', '.join(bindings) or '(default exchange only)'}{dead if dlx else ''}")
    user_tasks = sorted(n for n in app.tasks if not n.startswith("amqptasks."))  # not the builtin canvas tasks
    lines.append(f"  tasks:   {', '.join(user_tasks) or '(none registered!)'}")
    return "\n".join(lines)


async def _serve(app: App, settings: WorkerSettings) -> int:
    worker = Worker(app, settings)
    loop = asyncio.get_running_loop()
    terms = 0

    def on_term() -> None:
        nonlocal terms
        terms += 1
        log.info("SIGTERM: %s shutdown", "warm" if terms == 1 else "cold")
        worker.stop(cold=terms > 1)

    loop.add_signal_handler(signal.SIGTERM, on_term)

    def on_quit(signum: int) -> None:
        log.info("%s: cold shutdown", signal.Signals(signum).name)
        worker.stop(cold=True)

    for sig in (signal.SIGINT, signal.SIGQUIT):
        loop.add_signal_handler(sig, on_quit, sig)
    try:
        await worker.run()
    finally:
        await app.aclose()
    return worker.running


def event_loop() -> str:
    """The event loop the worker runs on: uvloop when installed, unless ``AMQPTASKS_EVENT_LOOP=asyncio``."""
    if os.environ.get(ENV_EVENT_LOOP, "").strip().lower() == "asyncio":
        return "asyncio"
    return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    if event_loop() == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


def _refuse_memory(app: App) -> None:
    if is_memory_url(app.config.broker.url):
        raise AmqpTasksError(
            f"broker {app.config.broker.url!r} lives inside one process: a worker process cannot reach the one your "
            "app publishes to; run the tasks in that process with amqptasks.testing.drain(app), or use amqp://"
        )


def serve(app: App, settings: WorkerSettings, *, beat: bool = False) -> None:
    """One consuming process (blocks until shutdown); with *beat*, the periodic-task scheduler in a thread."""
    _refuse_memory(app)
    if app.config.topology.provision:
        app.provision()
    with _beat_thread(app, beat):
        still_running = run_loop(_serve(app, settings))
    if still_running:
        # Cold shutdown (or grace period over): a thread cannot be stopped, and the interpreter would wait for
        # it at exit; its message is already back in the queue, so leave now.
        log.warning("exiting with task(s) still running")
        logging.shutdown()
        os._exit(0)


def serve_many(app: App, settings: WorkerSettings, processes: int, *, beat: bool = False) -> int:
    """N forked consuming processes, each replaced when it dies (:mod:`amqptasks.worker.supervise`); signals go
    to all of them; returns the worst exit status of the shutdown, or 1 when they keep dying at start.

    With *beat*, the scheduler runs in a thread of this (parent) process, started after the fork.
    """
    _refuse_memory(app)
    if app.config.topology.provision:
        app.provision()
    _prepare_broker(app, settings.queues)
    parent = os.getpid()
    supervisor = Supervisor(lambda number: _serve_child(app, child_settings(settings, number), parent), processes)
    supervisor.start()
    with _beat_thread(app, beat):
        return supervisor.watch()


def _prepare_broker(app: App, queues: Sequence[str]) -> None:
    """Before the fork: every queue exists (else one clear error, not one per process), and the stored revocations'
    stream is declared, so that N processes starting at once do not all create it (RabbitMQ 3.10 answers
    concurrent creations of one stream with INTERNAL_ERROR on all but one connection; see control/stored.py)."""
    broker = app.config.broker
    url = BrokerURL.parse(broker.url)
    connection = open_blocking(url, connection_name="amqptasks worker (starting)", tls=tls_options(broker))
    try:
        prober = Prober(connection)
        for queue in queues:
            code, _ = prober.attempt(lambda channel, q=queue: channel.queue_declare(q, passive=True))  # type: ignore[misc]
            if code == 404:
                raise missing_queue(queue)
        # Its failure is not ours to report: each process retries reading the stream, and says so if it cannot.
        prober.attempt(
            lambda channel: channel.queue_declare(
                REVOKED_STREAM, durable=True, arguments=dict(REVOKED_STREAM_ARGUMENTS)
            )
        )
    finally:
        connection.close()


def _serve_child(app: App, settings: WorkerSettings, parent: int) -> None:
    """One process of :func:`serve_many`: an expected failure is one log line and exit status 1, not a traceback.

    It dies with its parent: a worker killed with SIGKILL (by a user, a supervisor or the OOM killer) takes its
    processes with it, so their messages go back to the queue instead of running on in orphans nobody stops.
    """
    _die_with(parent)
    # Out of the parent's process group: a signal to the group (Ctrl-C in a terminal, ``kill -TERM -PGID``, most
    # process managers) reaches the parent only, which forwards it once. Received twice, a SIGTERM means "cold".
    os.setpgid(0, 0)
    try:
        serve(app, settings)
    except AmqpTasksError as exc:
        log.error("%s", exc)
        logging.shutdown()
        os._exit(1)


def _die_with(parent: int) -> None:
    """SIGKILL this process when *parent* dies (Linux ``prctl(PR_SET_PDEATHSIG)``; elsewhere nothing)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the prctl
        os._exit(1)


def child_settings(settings: WorkerSettings, index: int) -> WorkerSettings:
    """Process *index* of a multi-process worker: its own name (``amqptasks@host`` -> ``amqptasks-2@host``), so
    that control replies, events and monitors tell the processes apart instead of seeing one worker twice."""
    node, at, host = settings.hostname.partition("@")
    return dataclasses.replace(settings, hostname=f"{node}-{index}{at}{host}")


@contextmanager
def _beat_thread(app: App, enabled: bool) -> Iterator[None]:
    """``worker --beat``: the scheduler beside the worker, stopped (lock released) when the worker ends."""
    if not enabled:
        yield
        return
    from amqptasks.beat.scheduler import banner, start_thread

    scheduler, thread = start_thread(app)
    log.info("%s", banner(scheduler))
    try:
        yield
    finally:
        scheduler.stop()
        thread.join(5)
