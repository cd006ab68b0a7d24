"""Run workers in this process or in N forked ones: logging, signals, the startup banner."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from amqptasks.broker.url import BrokerURL
from amqptasks.constants import ENV_EVENT_LOOP, dlq_name, is_delay_name
from amqptasks.topology.desired import desired
from amqptasks.worker.consumer import Worker, WorkerSettings

if TYPE_CHECKING:
    from amqptasks.app import App

T = TypeVar("T")
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


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("[%(asctime)s %(levelname)s/%(processName)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("pika", "aio_pika", "aiormq"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # pika warns of every channel the broker closes; the worker says so itself, with what to do (a missing
    # queue, a consumer_timeout), so pika's line would only come first with a repr of its internals.
    logging.getLogger("pika.channel").setLevel(logging.ERROR)


def banner(app: App, settings: WorkerSettings, pool: str, processes: int) -> str:
    want = desired(app.config.topology, app.config.delays)
    lines = [
        f"amqptasks worker {settings.hostname}",
        f"  broker:  {BrokerURL.parse(app.config.broker.url).masked()}",
        f"  pool:    {pool}, concurrency {settings.concurrency} x {processes} process(es) on {event_loop()}, "
        f"prefetch {settings.prefetch or settings.concurrency * 4}",
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


def serve(app: App, settings: WorkerSettings, *, beat: bool = False) -> None:
    """One consuming process (blocks until shutdown); with *beat*, the periodic-task scheduler in a thread."""
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
    """N forked consuming processes; signals go to all of them; returns the worst exit status.

    With *beat*, the scheduler runs in a thread of this (parent) process, started after the fork.
    """
    if app.config.topology.provision:
        app.provision()
    context = multiprocessing.get_context("fork")
    children = [context.Process(target=serve, args=(app, settings), name=f"worker-{i + 1}") for i in range(processes)]
    for child in children:
        child.start()

    def forward(signum: int, _frame: Any) -> None:
        for child in children:
            if child.pid and child.is_alive():
                os.kill(child.pid, signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(sig, forward)
    with _beat_thread(app, beat):
        for child in children:
            child.join()
    return max((child.exitcode or 0) for child in children)


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
