"""Time for the in-memory broker: the wall clock, or a virtual one that tests move forward by hand.

Everything in ``memory://`` that waits (message TTLs, the delay tiers built from them, queue expiry) reads
time from one of these, so a test can jump an hour ahead without sleeping.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

__all__ = ["Clock", "SystemClock", "VirtualClock"]


class Clock(Protocol):
    """Seconds since the epoch, as ``time.time()`` gives them."""

    def time(self) -> float: ...


class SystemClock:
    def time(self) -> float:
        return time.time()

    def __repr__(self) -> str:
        return "SystemClock()"


class VirtualClock:
    """A clock that moves when told to: :meth:`advance` jumps ahead.

    Frozen (the default), it stands still between jumps: what a scenario observes does not depend on how fast
    the machine runs. With ``follow_wall=True`` it is the wall clock plus the jumps made so far, so code that
    reads the wall clock (a task's eta, ``expires``) stays consistent with it. It starts at the wall clock's time
    either way, so x-death times look real.
    """

    def __init__(self, start: float | None = None, *, follow_wall: bool = False) -> None:
        self._follow = follow_wall
        self._now = (time.time() if start is None else float(start)) - (time.time() if follow_wall else 0.0)
        self._lock = threading.Lock()

    def time(self) -> float:
        return self._now + time.time() if self._follow else self._now

    def advance(self, seconds: float) -> float:
        """Move *seconds* ahead (never back); returns the new time."""
        if seconds < 0:
            raise ValueError(f"a clock cannot go back ({seconds} s)")
        with self._lock:
            self._now += seconds
        return self.time()

    def set(self, when: float) -> None:
        """Jump to *when*, if it is ahead (time never goes back)."""
        with self._lock:
            self._now += max(0.0, when - self.time())

    def __repr__(self) -> str:
        return f"VirtualClock({self.time():.3f}{', follow_wall=True' if self._follow else ''})"
