"""The thread pool sync tasks run in, built for many short tasks, and race-free interrupts of its calls.

``loop.run_in_executor`` costs, per call, a concurrent future chained to an asyncio future and one wake-up
of the event loop (a self-pipe write and a GIL hand-off) per finished call. Here a finished call only appends
its outcome to a deque; the loop is woken once for all the calls that finished since its last turn.

Interrupts (the soft time limit, ``revoke --terminate``) raise an exception in a pool thread with
``PyThreadState_SetAsyncExc``, which takes effect at the thread's next bytecode check, whatever it runs by then.
Sent as a call ends, it used to land in the pool's own loop (the thread died for good) or in the next call on that
thread. So an interrupt targets a :class:`Run` -- one call, not a thread or a task id -- and is sent under the
run's lock only while the run is inside its function, at most once. When the function ends, the thread leaves the
run under the same lock and clears whatever is still pending for it: once it has left, nothing sent for that run
can reach the thread. An interrupt that fires in the few bytecodes between the function's end and the leave (the
only window left) is caught by the pool thread, which resumes where it was; the call's outcome is the function's.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from amqptasks.errors import SoftTimeLimitExceeded, Terminated

__all__ = ["INTERRUPTS", "Run", "TaskThreads"]

log = logging.getLogger("amqptasks.worker")

_Outcome = tuple[asyncio.Future[Any], bool, Any]
#: What :meth:`Run.interrupt` raises in a thread.
INTERRUPTS = (SoftTimeLimitExceeded, Terminated)


class Run:
    """One call in a pool thread: what an interrupt is aimed at (see the module docstring)."""

    __slots__ = ("_inside", "_lock", "_sent", "_thread")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread = 0
        self._inside = False
        self._sent = False

    def interrupt(self, exc_type: type[BaseException]) -> bool:
        """Raise *exc_type* in the call at its next bytecode (not while it is blocked in C); False when it is not
        inside its function (not started, or finished) or was interrupted already."""
        with self._lock:
            if not self._inside or self._sent:
                return False
            self._sent = True
            _set_async_exc(self._thread, exc_type)
            return True

    def _enter(self) -> None:
        with self._lock:
            self._thread, self._inside = threading.get_ident(), True

    def _leave(self) -> None:
        """After this returns, nothing sent for this run is pending or can be sent (idempotent)."""
        with self._lock:
            self._inside = False
            if self._sent:
                _set_async_exc(self._thread, None)  # clears an exception not raised yet


def _set_async_exc(thread: int, exc_type: type[BaseException] | None) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread), ctypes.py_object(exc_type) if exc_type else None)


class TaskThreads:
    def __init__(self, size: int, name: str = "amqptasks-task") -> None:
        self._work: queue.SimpleQueue[tuple[Callable[[], Any], asyncio.Future[Any], Run] | None] = queue.SimpleQueue()
        self._done: collections.deque[_Outcome] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake_scheduled = False
        self._threads = [threading.Thread(target=self._serve, name=f"{name}_{i}", daemon=True) for i in range(size)]
        self._started = False

    def submit(
        self, loop: asyncio.AbstractEventLoop, call: Callable[[], Any], run: Run | None = None
    ) -> asyncio.Future[Any]:
        """Run *call* in a pool thread; the future (of *loop*) gets its result or exception. *run*: the handle
        through which the call may be interrupted."""
        if not self._started:
            self._started, self._loop = True, loop
            for thread in self._threads:
                thread.start()
        future = loop.create_future()
        self._work.put((call, future, run or Run()))
        return future

    def shutdown(self, wait: bool) -> None:
        """Calls not started yet are cancelled; running ones finish (*wait* waits for them)."""
        while True:
            try:
                item = self._work.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[1].cancel()
        for _ in self._threads:
            self._work.put(None)
        if wait and self._started:
            for thread in self._threads:
                thread.join()

    def _serve(self) -> None:
        current: list[Any] = []  # [call, future, run, outcome or None] while a call is in hand
        while True:
            try:
                if not current:
                    item = self._work.get()
                    if item is None:
                        return
                    current[:] = [*item, None]
                self._serve_one(current)
            except INTERRUPTS as late:  # fired after its run's function had ended: spent, and the only one
                if current and current[3] is None:
                    current[3] = (False, late)  # it ended the function (as it returned), so it is the outcome
                log.debug("a time limit or terminate came as its task ended; the pool thread goes on")

    def _serve_one(self, current: list[Any]) -> None:
        """Run the call in hand (unless done already) and hand back its outcome; may be re-entered after a late
        interrupt, and then only finishes what is left."""
        call, future, run, outcome = current
        if outcome is None:
            if future.cancelled():
                current.clear()
                return
            try:
                run._enter()
                value = call()
            except BaseException as exc:  # handed to the awaiting task, which decides
                current[3] = (False, exc)
            else:
                current[3] = (True, value)
        run._leave()
        ok, value = current[3]
        current.clear()
        self._done.append((future, ok, value))
        # The loop clears the flag before it drains: an outcome appended after its drain finds it clear.
        if not self._wake_scheduled:
            self._wake_scheduled = True
            assert self._loop is not None
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits for this outcome any more
                self._loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        self._wake_scheduled = False
        while self._done:
            future, ok, value = self._done.popleft()
            if future.done():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
