"""``drain(app)``: run an app's tasks here, through the worker's real code path, until nothing is left to do.

The worker is the one ``amqptasks worker`` runs (decode, admission checks, middleware hooks, results, retries,
acks, reject to the dead-letter exchange), on a memory:// broker's transport, in this process: async tasks on
drain's own event loop, sync ones in the worker's thread pool. It stops when no consumed queue holds a ready
message and no task runs. With ``advance_time=True`` the broker's virtual clock then jumps to the next moment
something falls due (a countdown or retry leaving the delay tiers, a TTL expiring) and draining goes on, until
nothing is pending at all: a one-hour countdown runs at once.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from amqptasks.broker.memory import MemoryBroker, broker_for, is_memory_url
from amqptasks.worker.consumer import Worker, WorkerSettings
from amqptasks.worker.memory_transport import MemoryTransport
from amqptasks.worker.middleware import Middleware

if TYPE_CHECKING:
    from amqptasks.app import App
    from amqptasks.worker.delivery import Delivery

__all__ = ["DrainResult", "drain", "memory_broker"]

#: How long ``drain`` may take by default (wall clock) before it gives up with ``TimeoutError``.
DEFAULT_TIMEOUT = 30.0


@dataclass
class DrainResult:
    """What one ``drain`` did."""

    #: Messages the worker handled (ran, retried, rejected, skipped...).
    processed: int = 0
    #: Seconds the virtual clock was moved ahead.
    advanced: float = 0.0
    #: (task label, exception) of every task that failed for good (not retried), in order.
    failures: list[tuple[str, BaseException]] = field(default_factory=list)


class _Failures(Middleware):
    def __init__(self, result: DrainResult) -> None:
        self.result = result

    def after_failure(self, delivery: Delivery, exc: BaseException) -> None:
        self.result.failures.append((delivery.label, exc))


def memory_broker(app: App) -> MemoryBroker:
    """The memory:// broker *app* uses; ``TypeError`` saying what to do for any other broker."""
    url = app.config.broker.url
    if not is_memory_url(url):
        raise TypeError(
            f"this needs an app on memory:// (its broker is {url.split('@')[-1]!r}): build it with "
            "App(broker_url='memory://') or set AMQPTASKS_BROKER_URL=memory://"
        )
    return broker_for(url)


def _default_queues(app: App) -> list[str]:
    return [q.name for q in app.config.topology.queues if q.type != "stream"]


def drain(
    app: App,
    queues: Sequence[str] | None = None,
    *,
    advance_time: bool = False,
    fail_fast: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    concurrency: int = 1,
) -> DrainResult:
    """Run *app*'s tasks from *queues* (default: every queue of its YAML) until none is ready.

    ``fail_fast``: the first task that fails for good (no retry left) stops the drain -- after its message was
    dead-lettered -- and its exception is raised here. ``timeout``: seconds (wall clock) before ``TimeoutError``,
    e.g. for a task that retries for ever. ``concurrency``: tasks run at once (1: one after the other, in order).
    """
    broker = memory_broker(app)
    app._ensure_provisioned()
    names = list(queues) if queues is not None else _default_queues(app)
    result = DrainResult()
    run = _run(app, broker, names, advance_time, fail_fast, timeout, concurrency, result)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(run)
    else:  # called from async code: the worker needs a loop of its own, so it gets a thread of its own
        errors: list[BaseException] = []
        thread = threading.Thread(target=_in_thread, args=(run, errors), name="amqptasks drain")
        thread.start()
        thread.join()
        if errors:
            raise errors[0]
    if fail_fast and result.failures:
        label, exc = result.failures[0]
        exc.add_note(f"raised by {label} under amqptasks.testing.drain (fail_fast=True)")
        raise exc
    return result


def _in_thread(run: Any, errors: list[BaseException]) -> None:
    try:
        asyncio.run(run)
    except BaseException as exc:
        errors.append(exc)


async def _run(
    app: App,
    broker: MemoryBroker,
    queues: list[str],
    advance_time: bool,
    fail_fast: bool,
    timeout: float,
    concurrency: int,
    result: DrainResult,
) -> None:
    settings = WorkerSettings(queues=queues, concurrency=concurrency, prefetch=concurrency,
                              hostname="amqptasks@drain", middleware=[_Failures(result)], grace=1.0)  # fmt: skip
    worker = Worker(app, settings)
    serving = asyncio.ensure_future(worker.run())
    deadline = time.monotonic() + timeout
    try:
        transport = await _started(worker, serving)
        busy = f"drain: still busy after {timeout:g} s"
        while not (fail_fast and result.failures):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{busy} ({worker.processed} message(s) handled)")
            if transport.pump() or worker.running:
                try:
                    await asyncio.wait_for(worker.idle(), max(0.001, deadline - time.monotonic()))
                except TimeoutError:
                    raise TimeoutError(f"{busy}: {worker.running} task(s) still running") from None
                continue
            if not advance_time:
                break
            due = broker.next_due()
            if due is None:
                break
            step = max(0.0, due - broker.now())
            broker.advance(step)
            result.advanced += step
    finally:
        result.processed = worker.processed
        worker.stop()
        await serving
        await app.aclose()


async def _started(worker: Worker, serving: asyncio.Future[None]) -> MemoryTransport:
    while not isinstance(transport := worker.transport, MemoryTransport) or not transport.connected:
        if serving.done():
            serving.result()  # raises why the worker could not start
            raise RuntimeError("drain: the worker stopped before it started")
        await asyncio.sleep(0)
    return transport
