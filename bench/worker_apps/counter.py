"""Counting completions without a network call, the same way in every framework.

Each worker process appends one byte per finished task to ``$BENCH_COUNT_DIR/<pid>.count`` (``O_APPEND``: one
``write(2)``, atomic between threads) and, on its first task, its wall-clock time in ns to ``<pid>.first``.
The benchmark sums the files' sizes; the newest ``.count`` mtime is the last completion.
"""

from __future__ import annotations

import os
import threading
import time

COUNT_DIR_ENV = "BENCH_COUNT_DIR"

_fd = -1
_pid = -1
_lock = threading.Lock()


def _open(pid: int) -> int:
    directory = os.environ[COUNT_DIR_ENV]
    fd = os.open(os.path.join(directory, f"{pid}.count"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    first = os.open(os.path.join(directory, f"{pid}.first"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(first, str(time.time_ns()).encode())
    os.close(first)
    return fd


def tick() -> None:
    """One completed task (the whole body of the benchmark's no-op task)."""
    global _fd, _pid
    pid = os.getpid()  # forked pool children must not share their parent's file
    if pid != _pid:
        with _lock:
            if pid != _pid:
                _fd = _open(pid)
                _pid = pid
    os.write(_fd, b"x")
