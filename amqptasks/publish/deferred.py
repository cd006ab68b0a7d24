"""Publishing from a thread that runs an event loop, without blocking the loop.

``delay()``, ``apply_async()``, ``update_state()`` and ``publish_many()`` are plain functions: they cannot await.
Called on a thread whose event loop is running (in an ``async def`` task, or in any coroutine), waiting there for
the broker's confirm would stop every other coroutine of that loop: in a worker, every other task and every ack.
So on a running loop the call checks and builds the message at once (a bad argument still raises at once), hands
the publish to the loop as a task of its own (:func:`defer`), and returns without waiting for the confirm.

Where the confirm is awaited:

- In a worker, the run of the ``async def`` task that made the call awaits every publish it deferred before the
  task counts as finished: a confirm still comes before the task's message is acknowledged and before its result
  is stored, and a publish that fails fails the task (its retry options apply), as if ``delay()`` had raised.
- Anywhere else, the publish finishes in the background: a failure is logged at ERROR level, and
  ``await app.aclose()`` waits for what is still in flight on its loop. Use ``await task.adelay()`` to have the
  confirm (and any error) in hand.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import logging
from collections.abc import Coroutine
from typing import Any

__all__ = ["defer", "drain", "owner", "running_loop", "settle"]

log = logging.getLogger("amqptasks.publish")

#: The publishes deferred by the current worker task run (set by the worker around an ``async def`` task).
owner: contextvars.ContextVar[list[asyncio.Future[Any]] | None] = contextvars.ContextVar(
    "amqptasks_deferred_publishes", default=None
)
#: Deferred publishes nobody awaits, per loop (strong references: a task only weakly referenced may vanish).
_background: dict[asyncio.AbstractEventLoop, set[asyncio.Future[Any]]] = {}
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


def defer(loop: asyncio.AbstractEventLoop, publish: Coroutine[Any, Any, Any], what: str) -> asyncio.Future[Any]:
    """Run *publish* on *loop* (this thread's running loop) without waiting for it; see the module docstring."""
    future = _pump(loop).add(publish, what)
    runs = owner.get()
    if runs is not None:
        runs.append(future)
        return future
    pending = _background.setdefault(loop, set())
    pending.add(future)
    future.add_done_callback(lambda done: _finished(loop, done, what))
    return future


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


def _finished(loop: asyncio.AbstractEventLoop, task: asyncio.Future[Any], what: str) -> None:
    pending = _background.get(loop)
    if pending is not None:
        pending.discard(task)
        if not pending:
            del _background[loop]
    if task.cancelled():
        log.error(
            "publishing %s from a coroutine: cancelled before the broker confirmed it (the event loop was stopped "
            "first?); it may not have been sent -- await app.aclose() before the loop ends",
            what,
        )
        return
    exc = task.exception()
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
    """Wait for the running loop's background publishes (their failures are logged, not raised)."""
    pending = _background.get(asyncio.get_running_loop())
    if pending:
        await asyncio.gather(*list(pending), return_exceptions=True)
