"""Running a task's function: coroutines on the worker's loop, plain functions in the worker's pool.

``--pool`` chooses where sync (plain ``def``) tasks run; ``async def`` tasks run on the event loop in every pool.

- ``threads`` (the default): a thread pool of ``concurrency`` threads in the worker process.
- ``asyncio``: the same thread pool, so a sync task never blocks the loop; the name says the app is meant to be
  mostly ``async def``. Its guarantees are those of ``threads``.
- ``processes``: ``concurrency`` forked child processes (:mod:`amqptasks.worker.processes`), for CPU-bound tasks,
  tasks that must be killable, and leaky ones (``max_tasks_per_child``).

Time limits, and exactly what each can guarantee:

- ``async def`` tasks: the soft limit cancels the task (``asyncio.CancelledError`` inside it, reported as
  ``SoftTimeLimitExceeded`` if it does not return); the hard limit stops waiting for good. Reliable wherever
  the coroutine awaits; a coroutine that blocks the loop without awaiting cannot be interrupted by anything.
- threads and asyncio: the soft limit raises ``SoftTimeLimitExceeded`` in the task's thread
  (``PyThreadState_SetAsyncExc``) the next time it runs Python bytecode, so not while it is blocked in C (a
  socket read, ``time.sleep``). A thread cannot be killed: at the hard limit the message goes down the failure
  path and the thread is abandoned, still running (and occupying one of the pool's threads), until it returns.
- processes: the soft limit raises ``SoftTimeLimitExceeded`` in the child by ``SIGALRM``, which also interrupts
  ``time.sleep`` and socket reads (not C code that never checks for signals). At the hard limit the child is
  killed (``SIGKILL``) and replaced, and the task fails with ``TimeLimitExceeded``: nothing keeps running. A
  child that dies by itself fails its task with ``WorkerLostError`` and is replaced.

In every pool, a task past its hard limit goes down the failure path (retried if its options say so, else
dead-lettered): it is never redelivered endlessly.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from amqptasks.errors import SoftTimeLimitExceeded, Terminated, TimeLimitExceeded
from amqptasks.publish import deferred
from amqptasks.worker import request as request_context
from amqptasks.worker.processes import ProcessPool
from amqptasks.worker.request import Request
from amqptasks.worker.threads import Run, TaskThreads

if TYPE_CHECKING:
    from amqptasks.app import App

#: The values of ``--pool``.
POOLS = ("threads", "asyncio", "processes")


def time_limits(header: Sequence[Any], soft: float | None, hard: float | None) -> tuple[float | None, float | None]:
    """The message's ``timelimit`` over the task's, as ``(soft, hard)``. The header is Celery's
    ``[time_limit, soft_time_limit]`` (hard first: celery/app/amqp.py), from our clients and Celery's alike."""

    def given(value: Any) -> float | None:
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) and value > 0 else None

    return given(header[1]) or soft, given(header[0]) or hard


class Executor:
    """Runs one task call under its soft and hard time limits; returns its result or raises its exception."""

    def __init__(
        self, threads: int, *, pool: str = "threads", app: App | None = None, max_tasks_per_child: int | None = None
    ) -> None:
        if pool not in POOLS:
            raise ValueError(f"unknown pool {pool!r}: use one of {', '.join(POOLS)}")
        self.pool = TaskThreads(threads)
        self.processes: ProcessPool | None = None
        #: Sync calls submitted to a thread and not finished: task id -> its run (for revoke --terminate).
        self._runs: dict[str, Run] = {}
        self._closed = False
        if pool == "processes":
            if app is None:
                raise ValueError("pool='processes' needs the app: its children look tasks up by name")
            self.processes = ProcessPool(app, threads, max_tasks_per_child)

    async def run(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], request: Request,
        soft: float | None, hard: float | None, *, name: str | None = None,
    ) -> Any:  # fmt: skip
        """*fn* with its arguments. A process pool runs the app's task *name* (default: ``request.task``) instead,
        which is the same function: a child looks it up in the app rather than receive it.

        After :meth:`shutdown` this raises ``asyncio.CancelledError``: a task that did not run must leave its
        message unsettled (the broker requeues it), never send it down the failure path to the dead letters.
        """
        if self._closed:
            raise asyncio.CancelledError("the executor is shut down")
        if inspect.iscoroutinefunction(fn):
            return await self._run_async(fn, args, kwargs, request, soft, hard)
        if self.processes is not None:
            return await self.processes.run(name or request.task, args, kwargs, request, soft, hard)
        return await self._run_thread(fn, args, kwargs, request, soft, hard)

    async def _run_async(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], request: Request,
        soft: float | None, hard: float | None,
    ) -> Any:  # fmt: skip
        """The coroutine task, then the publishes it deferred (``delay()`` in an ``async def`` task does not wait
        for its confirm on the loop: the run does, here, so a failed publish fails the task)."""
        publishes: list[asyncio.Future[Any]] = []
        token, owned = request_context.current.set(request), deferred.owner.set(publishes)
        try:
            task = asyncio.ensure_future(fn(*args, **kwargs))
        finally:
            deferred.owner.reset(owned)
            request_context.current.reset(token)
        try:
            value = await self._limited(task, soft, hard)
        except (asyncio.CancelledError, TimeLimitExceeded):
            raise  # cancelled, or abandoned at its hard limit: no more waiting for anything of it
        except BaseException:
            await deferred.settle(publishes, raise_first=False)  # confirmed before the failure path runs
            raise
        await deferred.settle(publishes)
        return value

    @staticmethod
    async def _limited(task: asyncio.Future[Any], soft: float | None, hard: float | None) -> Any:
        try:
            done, _ = await asyncio.wait({task}, timeout=soft if soft is not None else hard)
        except asyncio.CancelledError:  # the worker cancelled this call (revoke --terminate): the task goes with it
            task.cancel()
            raise
        if task in done:
            return task.result()
        task.cancel()
        remaining = None if hard is None else max(0.0, hard - (soft or 0.0))
        done, _ = await asyncio.wait({task}, timeout=remaining if soft is not None else 0)
        if task in done and not task.cancelled():
            try:
                return task.result()
            except asyncio.CancelledError:
                raise SoftTimeLimitExceeded(f"soft time limit ({soft:g} s) exceeded") from None
        if soft is not None and (task in done or hard is None):
            raise SoftTimeLimitExceeded(f"soft time limit ({soft:g} s) exceeded")
        raise TimeLimitExceeded(f"hard time limit ({hard:g} s) exceeded")

    async def _run_thread(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], request: Request,
        soft: float | None, hard: float | None,
    ) -> Any:  # fmt: skip
        loop = asyncio.get_running_loop()
        run = Run()
        self._runs[request.id] = run
        try:
            if soft is None and hard is None:  # the usual case: no started signal, no timers
                return await self.pool.submit(loop, self._in_thread(fn, args, kwargs, request), run)
            return await self._limited_thread(loop, run, fn, args, kwargs, request, soft, hard)
        finally:
            if self._runs.get(request.id) is run:  # a later run of the same id (a retry) may have taken the slot
                del self._runs[request.id]

    async def _limited_thread(
        self, loop: asyncio.AbstractEventLoop, run: Run, fn: Callable[..., Any], args: tuple[Any, ...],
        kwargs: dict[str, Any], request: Request, soft: float | None, hard: float | None,
    ) -> Any:  # fmt: skip
        started: asyncio.Future[None] = loop.create_future()

        def mark_started() -> None:
            if not started.done():
                started.set_result(None)

        on_start = lambda: loop.call_soon_threadsafe(mark_started)  # noqa: E731
        future = self.pool.submit(loop, self._in_thread(fn, args, kwargs, request, on_start), run)
        # The limits count from when a thread picks the call up, not from submission: threads abandoned
        # at their hard limit can keep the pool busy, and a call must not be failed before it starts.
        await asyncio.wait({started, future}, return_when=asyncio.FIRST_COMPLETED)
        first = soft if soft is not None else hard
        try:
            return await asyncio.wait_for(asyncio.shield(future), first)
        except TimeoutError:
            pass
        if soft is not None:
            run.interrupt(SoftTimeLimitExceeded)  # this run only: a no-op once its function has ended
        if hard is None:
            return await future
        try:
            return await asyncio.wait_for(asyncio.shield(future), max(0.0, hard - (soft or 0.0)))
        except TimeoutError:
            raise TimeLimitExceeded(f"hard time limit ({hard:g} s) exceeded; the thread is abandoned") from None

    def _in_thread(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], request: Request,
        on_start: Callable[[], Any] | None = None,
    ) -> Callable[[], Any]:  # fmt: skip
        """The call a pool thread makes, with ``self.request`` set."""

        def call() -> Any:
            if on_start is not None:
                on_start()
            token = request_context.current.set(request)
            try:
                return fn(*args, **kwargs)
            finally:
                request_context.current.reset(token)

        return call

    def terminate_thread(self, task_id: str) -> bool:
        """``revoke --terminate`` of a sync task in a thread: :class:`Terminated` raised in it at its next bytecode
        (not while it is blocked in C); False if it is not inside its function now (see worker/threads.py)."""
        run = self._runs.get(task_id)
        return run is not None and run.interrupt(Terminated)

    def shutdown(self, wait: bool) -> None:
        """Stop the pools. Children running a task finish it (*wait*) or are killed; threads cannot be."""
        self._closed = True
        if self.processes is not None:
            self.processes.shutdown(wait)
        self.pool.shutdown(wait=wait)
