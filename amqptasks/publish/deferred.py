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
import contextvars
import logging
from collections.abc import Coroutine
from typing import Any

__all__ = ["defer", "drain", "owner", "running_loop", "settle"]

log = logging.getLogger("amqptasks.publish")

#: The publishes deferred by the current worker task run (set by the worker around an ``async def`` task).
owner: contextvars.ContextVar[list[asyncio.Task[Any]] | None] = contextvars.ContextVar(
    "amqptasks_deferred_publishes", default=None
)
#: Deferred publishes nobody awaits, per loop (strong references: a task only weakly referenced may vanish).
_background: dict[asyncio.AbstractEventLoop, set[asyncio.Task[Any]]] = {}


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running on this thread, if any."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def defer(loop: asyncio.AbstractEventLoop, publish: Coroutine[Any, Any, Any], what: str) -> asyncio.Task[Any]:
    """Run *publish* on *loop* (this thread's running loop) without waiting for it; see the module docstring."""
    task = loop.create_task(publish, name=f"amqptasks publish {what}")
    runs = owner.get()
    if runs is not None:
        runs.append(task)
        return task
    pending = _background.setdefault(loop, set())
    pending.add(task)
    task.add_done_callback(lambda done: _finished(loop, done, what))
    return task


def _finished(loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any], what: str) -> None:
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


async def settle(tasks: list[asyncio.Task[Any]], *, raise_first: bool = True) -> None:
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
