"""Running a task's function: coroutines on the worker's loop, plain functions in a thread pool.

Time limits, and exactly what each pool can guarantee:

- ``async def`` tasks: the soft limit cancels the task (``asyncio.CancelledError`` inside it, reported as
  ``SoftTimeLimitExceeded`` if it does not return); the hard limit stops waiting for good. Reliable wherever
  the coroutine awaits.
- threads: the soft limit raises ``SoftTimeLimitExceeded`` in the task's thread (``PyThreadState_SetAsyncExc``)
  the next time it runs Python bytecode, so not while it is blocked in C (a socket read, ``time.sleep``).
  A thread cannot be killed: at the hard limit the message goes down the failure path and the thread is
  abandoned, still running, until it returns.
- processes (``--pool processes``): see :mod:`amqptasks.worker.processes`.
"""

from __future__ import annotations

import asyncio
import ctypes
import inspect
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from amqptasks.errors import SoftTimeLimitExceeded, TimeLimitExceeded
from amqptasks.worker import request as request_context
from amqptasks.worker.request import Request


def _raise_in_thread(thread_id: int, exc_type: type[BaseException]) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc_type))


class Executor:
    """Runs one task call under its soft and hard time limits; returns its result or raises its exception."""

    def __init__(self, threads: int) -> None:
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="amqptasks-task")

    async def run(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], request: Request,
        soft: float | None, hard: float | None,
    ) -> Any:  # fmt: skip
        if inspect.iscoroutinefunction(fn):
            return await self._run_async(fn, args, kwargs, request, soft, hard)
        return await self._run_thread(fn, args, kwargs, request, soft, hard)

    async def _run_async(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], request: Request,
        soft: float | None, hard: float | None,
    ) -> Any:  # fmt: skip
        token = request_context.current.set(request)
        try:
            task = asyncio.ensure_future(fn(*args, **kwargs))
        finally:
            request_context.current.reset(token)
        done, _ = await asyncio.wait({task}, timeout=soft if soft is not None else hard)
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
        if task in done or (soft is not None and hard is None):
            raise SoftTimeLimitExceeded(f"soft time limit ({soft:g} s) exceeded")
        raise TimeLimitExceeded(f"hard time limit ({hard:g} s) exceeded")

    async def _run_thread(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], request: Request,
        soft: float | None, hard: float | None,
    ) -> Any:  # fmt: skip
        thread_id: list[int] = []
        finished = threading.Event()

        def call() -> Any:
            thread_id.append(threading.get_ident())
            token = request_context.current.set(request)
            try:
                return fn(*args, **kwargs)
            finally:
                request_context.current.reset(token)
                finished.set()

        future = asyncio.get_running_loop().run_in_executor(self.pool, call)
        if soft is None and hard is None:
            return await future
        first = soft if soft is not None else hard
        try:
            return await asyncio.wait_for(asyncio.shield(future), first)
        except TimeoutError:
            pass
        if soft is not None and thread_id and not finished.is_set():
            _raise_in_thread(thread_id[0], SoftTimeLimitExceeded)
        if hard is None:
            return await future
        try:
            return await asyncio.wait_for(asyncio.shield(future), max(0.0, hard - (soft or 0.0)))
        except TimeoutError:
            raise TimeLimitExceeded(f"hard time limit ({hard:g} s) exceeded; the thread is abandoned") from None

    def shutdown(self, wait: bool) -> None:
        self.pool.shutdown(wait=wait, cancel_futures=True)
