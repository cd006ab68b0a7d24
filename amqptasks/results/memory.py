"""``memory://`` results: states kept in this process, for apps on a memory:// broker (tests).

The worker (``amqptasks.testing.drain``) and the caller are one process, so a state stored is a state received:
no broker, no serialisation beyond what the result middleware already did. States of different backends with the
same URL are shared (as a store on a server would be); ``memory://NAME`` keeps its own.
"""

from __future__ import annotations

import threading
from typing import Any

from amqptasks.results.backend import OnMessage, ResultBackend, StateBook

__all__ = ["MemoryBackend"]

_books: dict[str, StateBook] = {}
_lock = threading.Lock()


class MemoryBackend(ResultBackend):
    uses_reply_to = False

    def __init__(self, url: str) -> None:
        self.url = url
        with _lock:
            self.book = _books.setdefault(url, StateBook())

    def store(self, task_id: str, meta: dict[str, Any], reply_to: str | None) -> None:
        self.book.add(dict(meta))

    async def astore(self, task_id: str, meta: dict[str, Any], reply_to: str | None) -> None:
        self.book.add(dict(meta))

    def peek(self, task_id: str) -> dict[str, Any] | None:
        return self.book.latest(task_id)

    def wait(
        self, task_id: str, timeout: float | None, interval: float, on_message: OnMessage | None
    ) -> dict[str, Any]:
        return self.book.wait(task_id, timeout, on_message)

    def forget(self, task_id: str) -> None:
        self.book.forget(task_id)

    def close(self) -> None:
        """Nothing to release: the states stay for other apps on the same URL."""
