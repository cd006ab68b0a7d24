"""The thread pool sync tasks run in, built for many short tasks.

``loop.run_in_executor`` costs, per call, a concurrent future chained to an asyncio future and one wake-up
of the event loop (a self-pipe write and a GIL hand-off) per finished call. Here a finished call only appends
its outcome to a deque; the loop is woken once for all the calls that finished since its last turn.
"""

from __future__ import annotations

import asyncio
import collections
import queue
import threading
from collections.abc import Callable
from typing import Any

_Outcome = tuple[asyncio.Future[Any], bool, Any]


class TaskThreads:
    def __init__(self, size: int, name: str = "amqptasks-task") -> None:
        self._work: queue.SimpleQueue[tuple[Callable[[], Any], asyncio.Future[Any]] | None] = queue.SimpleQueue()
        self._done: collections.deque[_Outcome] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake_scheduled = False
        self._threads = [threading.Thread(target=self._serve, name=f"{name}_{i}", daemon=True) for i in range(size)]
        self._started = False

    def submit(self, loop: asyncio.AbstractEventLoop, call: Callable[[], Any]) -> asyncio.Future[Any]:
        """Run *call* in a pool thread; the future (of *loop*) gets its result or exception."""
        if not self._started:
            self._started, self._loop = True, loop
            for thread in self._threads:
                thread.start()
        future = loop.create_future()
        self._work.put((call, future))
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
        while (item := self._work.get()) is not None:
            call, future = item
            if future.cancelled():
                continue
            try:
                outcome: _Outcome = (future, True, call())
            except BaseException as exc:  # handed to the awaiting task, which decides
                outcome = (future, False, exc)
            self._done.append(outcome)
            # The loop clears the flag before it drains: an outcome appended after its drain finds it clear.
            if not self._wake_scheduled:
                self._wake_scheduled = True
                assert self._loop is not None
                try:
                    self._loop.call_soon_threadsafe(self._deliver)
                except RuntimeError:  # the loop is closed: nobody waits for this outcome any more
                    return

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
