"""Publishing from a thread that runs an event loop, without blocking the loop.

``delay()``, ``apply_async()``, ``update_state()`` and ``publish_many()`` are plain functions: they cannot await.
Called on a thread whose event loop is running (in an ``async def`` task, or in any coroutine), waiting there for
the broker's confirm would stop every other coroutine of that loop: in a worker, every other task and every ack.
So on a running loop the call checks and builds the message at once (a bad argument still raises at once), hands
the publish over (:func:`defer`), and returns without waiting for the confirm. Where it goes, and who waits:

- In a worker, inside an ``async def`` task: to the loop's publisher, as a task of the loop. The task's run awaits
  every publish it deferred before the task counts as finished: a confirm still comes before the task's message is
  acknowledged and before its result is stored, and a publish that fails fails the task (its retry options
  apply), as if ``delay()`` had raised.
- Anywhere else (a web app's coroutine, a script's ``asyncio.run``): to one publishing thread per process,
  in order. It is not the loop's: ``asyncio.run`` ending (which cancels the loop's tasks) does not cancel it, and
  the interpreter finishes what it holds before exiting. A failure is logged at ERROR level; ``await
  app.aclose()`` waits for what is still in flight. Use ``await task.adelay()`` to have the confirm, or the
  error, in hand.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextvars
import functools
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from amqptasks.broker import forks

__all__ = ["defer", "drain", "owner", "running_loop", "settle"]

log = logging.getLogger("amqptasks.publish")

#: The publishes deferred by the current worker task run (set by the worker around an ``async def`` task).
owner: contextvars.ContextVar[list[asyncio.Future[Any]] | None] = contextvars.ContextVar(
    "amqptasks_deferred_publishes", default=None
)
#: At most this many deferred publishes start per turn of the loop: 50 async tasks that publish twice each would
#: otherwise start 100 publishes (~130 µs of aio-pika each, measured here) in one turn, and every other coroutine
#: of the loop would wait ~13 ms for it. The confirms still overlap: this only spreads the sending.
PER_TURN = 16


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running on this thread, if any."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def defer(
    loop: asyncio.AbstractEventLoop,
    on_loop: Callable[[], Coroutine[Any, Any, Any]],
    in_thread: Callable[[], Any],
    what: str,
) -> None:
    """Publish without waiting, from a thread whose *loop* is running: *on_loop()* (a coroutine) inside a worker's
    ``async def`` task, else *in_thread()* (blocking) in the publishing thread; see the module docstring."""
    runs = owner.get()
    if runs is not None:
        runs.append(_pump(loop).add(on_loop(), what))
        return
    _sender.submit(in_thread, what)


class _Sender:
    """The process's publishing thread for deferred publishes nobody awaits (made on first use, again after fork)."""

    def __init__(self) -> None:
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self.pending: set[concurrent.futures.Future[Any]] = set()
        forks.on_fork_in_child(self._forget_inherited)

    def submit(self, call: Callable[[], Any], what: str) -> None:
        with self._lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="amqptasks-publish")
            future = self._executor.submit(call)
            self.pending.add(future)
        future.add_done_callback(functools.partial(self._finished, what))

    def _finished(self, what: str, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self.pending.discard(future)
        _report(future, what)

    def _forget_inherited(self) -> None:
        forks.keep_inherited(self._executor)  # its thread does not exist in the child
        self._executor, self._lock, self.pending = None, threading.Lock(), set()


_sender = _Sender()


class _Pump:
    """Starts one loop's deferred publishes in order, :data:`PER_TURN` per turn of the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.waiting: collections.deque[tuple[Coroutine[Any, Any, Any], asyncio.Future[Any], str]] = collections.deque()
        self.running: asyncio.Task[None] | None = None

    def add(self, publish: Coroutine[Any, Any, Any], what: str) -> asyncio.Future[Any]:
        future = self.loop.create_future()
        self.waiting.append((publish, future, what))
        if self.running is None:
            # A context of its own: not the one of the task run that happened to defer first.
            self.running = self.loop.create_task(self._run(), context=contextvars.Context())
        return future

    async def _run(self) -> None:
        try:
            while self.waiting:
                for _ in range(min(PER_TURN, len(self.waiting))):
                    publish, future, what = self.waiting.popleft()
                    task = self.loop.create_task(publish, name=f"amqptasks publish {what}")
                    task.add_done_callback(functools.partial(_copy, future))
                await asyncio.sleep(0)
        finally:
            self.running = None
            while self.waiting:  # the loop is stopping (this task was cancelled): these never started
                publish, future, _ = self.waiting.popleft()
                publish.close()
                future.cancel()


_pumps: dict[asyncio.AbstractEventLoop, _Pump] = {}


def _pump(loop: asyncio.AbstractEventLoop) -> _Pump:
    pump = _pumps.get(loop)
    if pump is None:
        for closed in [each for each in _pumps if each.is_closed()]:
            del _pumps[closed]
        pump = _pumps[loop] = _Pump(loop)
    return pump


def _copy(future: asyncio.Future[Any], task: asyncio.Task[Any]) -> None:
    if future.done():
        return
    if task.cancelled():
        future.cancel()
    elif (exc := task.exception()) is not None:
        future.set_exception(exc)
    else:
        future.set_result(task.result())


def _report(future: concurrent.futures.Future[Any], what: str) -> None:
    if future.cancelled():
        log.error("publishing %s from a coroutine: cancelled before it was sent", what)
        return
    exc = future.exception()
    if exc is not None:
        log.error("publishing %s from a coroutine failed: %s (await task.adelay() raises such errors)", what, exc)


async def settle(tasks: list[asyncio.Future[Any]], *, raise_first: bool = True) -> None:
    """Wait for every deferred publish of a task run; raise the first failure (*raise_first*), log the others."""
    if not tasks:
        return
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    failures = [each for each in outcomes if isinstance(each, BaseException)]
    raised = failures.pop(0) if raise_first and failures else None
    for each in failures:
        log.error("a publish this task made from its coroutine failed: %r", each)
    if raised is not None:
        raise raised


async def drain() -> None:
    """Wait for the deferred publishes nobody awaits (their failures are logged, not raised)."""
    pending = [asyncio.wrap_future(each) for each in list(_sender.pending)]
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
