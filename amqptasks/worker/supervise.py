"""``amqptasks worker --processes N``: the parent process that keeps N consuming processes alive.

Each consuming process is forked from the parent and runs a whole worker (its own connection, prefetch and
journal). When one dies without being asked to (a segfault, ``os._exit``, the OOM killer, SIGKILL), the parent

- logs one line: its pid, its exit status or signal, and the ids of the tasks it was running, read from the
  journal it left (:mod:`amqptasks.worker.journal`);
- appends how it died to that journal, so the worker that receives the crasher's redelivery says so when it
  charges it (and, past ``max_redeliveries``, in the DLQ's failure record);
- starts a fresh one in its place after a backoff that doubles while processes keep dying young
  (:data:`BACKOFF_MIN_S` .. :data:`BACKOFF_MAX_S`), and starts over once one has lived :data:`STABLE_S`.

A process that dies before it consumed anything (a bad queue name, an unreachable broker, an import error) is
*dying at start*: after :data:`MAX_START_FAILURES` such deaths in a row the parent stops the others and exits 1
with a line saying so, rather than loop for ever. A process that exits 0 (burst mode drained its queues, or a
shutdown) is not replaced. SIGTERM, SIGINT and SIGQUIT are passed on to every process; the parent then waits
for them all and returns the worst exit status.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from amqptasks.worker.journal import append, journal_paths, read_dead

log = logging.getLogger("amqptasks.worker")

BACKOFF_MIN_S, BACKOFF_MAX_S = 0.2, 30.0
#: A process that lived this long resets the backoff.
STABLE_S = 60.0
#: This many processes in a row dying before they consumed anything: give up.
MAX_START_FAILURES = 5
_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


@dataclass
class _Slot:
    number: int
    process: Any = None  # multiprocessing.Process (its type is not public)
    started: float = 0.0
    restart_at: float | None = None
    backoff: float = 0.0
    start_failures: int = 0


def describe(exitcode: int | None) -> str:
    if exitcode is None:
        return "ended (no exit status)"
    if exitcode < 0:
        try:
            return f"was killed by signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


class Supervisor:
    """Runs ``target(n)`` in *processes* forked children (n = 1..processes) and keeps them alive (see the module
    docstring)."""

    def __init__(self, target: Callable[[int], None], processes: int) -> None:
        self._context = multiprocessing.get_context("fork")
        self._target = target
        self._slots = [_Slot(i + 1) for i in range(processes)]
        self._stopping = False
        self._worst = 0

    def start(self) -> None:
        """Fork the processes and take over the shutdown signals."""
        for sig in _SIGNALS:
            signal.signal(sig, self._forward)
        for slot in self._slots:
            self._start(slot)

    def watch(self) -> int:
        """Keep them alive until they all exit; the worst exit status of the shutdown, or 1 if they kept dying at
        start. (With ``--beat``, a replacement is forked while the scheduler thread runs: it only touches that
        thread's locks through logging, which the child reinitialises.)"""
        while True:
            alive = [s for s in self._slots if s.process is not None]
            waiting = [s.restart_at for s in self._slots if s.restart_at is not None]
            if not alive and (self._stopping or not waiting):
                return self._worst
            timeout = max(0.0, min(waiting) - time.monotonic()) if waiting else 1.0
            sentinels = [s.process.sentinel for s in alive]
            if sentinels:
                multiprocessing.connection.wait(sentinels, timeout=min(timeout, 1.0))
            else:
                time.sleep(min(timeout, 1.0))
            for slot in alive:
                if not slot.process.is_alive():
                    self._ended(slot)
            if self._gave_up():
                return 1
            now = time.monotonic()
            for slot in self._slots:
                if slot.restart_at is not None and slot.restart_at <= now and not self._stopping:
                    self._start(slot)

    def _forward(self, signum: int, _frame: Any) -> None:
        self._stopping = True
        for slot in self._slots:
            slot.restart_at = None
            if slot.process is not None and slot.process.pid and slot.process.is_alive():
                os.kill(slot.process.pid, signum)

    def _start(self, slot: _Slot) -> None:
        slot.restart_at = None
        # Blocked across the fork: the child resets the parent's handlers (which would signal its siblings)
        # before any signal can reach it.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            slot.process = self._context.Process(
                target=self._child, name=f"worker-{slot.number}", args=(slot.number, mask)
            )
            slot.process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        slot.started = time.monotonic()

    def _child(self, number: int, mask: Any) -> None:
        for sig in _SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self._target(number)

    def _ended(self, slot: _Slot) -> None:
        process, slot.process = slot.process, None
        process.join()
        code, pid = process.exitcode, process.pid
        if code == 0 or self._stopping:  # asked to (or burst mode done): its status is the worker's
            self._worst = max(self._worst, code if code and code > 0 else (1 if code else 0))
            return
        how = describe(code)
        running: list[str] = []
        ready = False
        for path in journal_paths(pid):
            append(path, f"X {how}")
            dead = read_dead(path)
            if dead is not None:
                running += sorted(key.partition("~")[0] for key in dead.running)
                ready = ready or dead.ready
        lived = time.monotonic() - slot.started
        slot.start_failures = 0 if ready else slot.start_failures + 1
        slot.backoff = BACKOFF_MIN_S if lived >= STABLE_S else min(BACKOFF_MAX_S, max(BACKOFF_MIN_S, slot.backoff * 2))
        slot.restart_at = time.monotonic() + slot.backoff
        tasks = f"while running task(s) {', '.join(running)}" if running else "while running no task"
        when = "" if ready else " before it consumed anything"
        log.error("worker process %d (%s) %s%s %s, after %.1f s; a new one starts in %.1f s",
                  pid, process.name, how, when, tasks, lived, slot.backoff)  # fmt: skip

    def _gave_up(self) -> bool:
        failing = [s for s in self._slots if s.start_failures >= MAX_START_FAILURES]
        if not failing or self._stopping:
            return False
        log.error("worker processes keep dying at start (%d times in a row, none consumed anything): giving up; "
                  "the lines above say why", failing[0].start_failures)  # fmt: skip
        self._forward(signal.SIGTERM, None)
        for slot in self._slots:
            if slot.process is not None:
                slot.process.join(30)
        return True
