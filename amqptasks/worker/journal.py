"""Crash bookkeeping: which tasks a worker process had *started* when it died, told by a file it leaves behind.

The problem. A worker process that dies (segfault, ``os._exit``, the OOM killer, SIGKILL) can write nothing
afterwards, and the broker then requeues *every* message that process held unacknowledged: the one or few it was
running, and the prefetched ones that had not started. All of them come back with ``redelivered=true``; the flag
alone cannot tell the task that killed its worker from an innocent bystander (or from a connection that was merely
cut). Charging every redelivered message as "it may kill its worker" dead-letters innocents as poison after a few
crashes, which is what happened before this module.

The design: an append-only journal per worker process, written *before* a task runs.

- Each worker process opens ``<dir>/<pid>-<random>.journal`` (:func:`journal_dir`: ``$AMQPTASKS_JOURNAL_DIR``,
  else ``$XDG_RUNTIME_DIR/amqptasks``, else ``/tmp/amqptasks-<uid>``) and holds an exclusive ``flock`` on it for
  its whole life. The kernel releases the lock when the process dies, however it dies: **a journal whose lock can
  be taken belongs to a dead process**. No pid guessing, no clocks.
- ``S <task id>`` is appended just before a task runs and ``F <task id>`` once it has ended (a store into the
  file's shared memory map: the page cache keeps it whatever happens to the process; only a crash of the machine
  loses it, and then the broker's own state goes with it). A clean exit (warm or cold shutdown) deletes the
  journal: a task abandoned by a shutdown did not kill anything.
- A message that arrives redelivered is looked up in the journals of dead processes (:meth:`Crashes.lookup`): if
  a dead process had started it and not finished it, **it was running when its process died** and is charged one
  "killed its worker" attempt (a counted copy, or the DLQ with reason ``worker-lost`` past ``max_redeliveries``).
  Otherwise it was prefetched but never started, or its connection was cut while its process lived (a live
  process's journal is locked, so it is not read): it runs again, uncharged.
- A supervising parent (``worker --processes N``) appends ``X <how it died>`` to a dead child's journal, so the
  charge says "killed by SIGSEGV"; under another supervisor (systemd, a shell loop) the exit status is unknown to
  us and the charge says so.
- Dead journals are kept until every task they name has been charged (``C <task id>``, appended by whoever charged
  it), or for :data:`DEAD_JOURNAL_TTL_S`; a live journal is compacted (rewritten to the tasks running now) once its
  map of :data:`JOURNAL_BYTES` is full.

Scope: one host. A crasher redelivered to a worker on another host runs there uncharged; that host's own journal
charges it if it crashes there too, and the count travels in the message once charged, so the bound holds within
a factor of the number of hosts. The ``processes`` pool needs no journal for its children: the worker process
outlives them and sees them die (:class:`~amqptasks.worker.processes.WorkerLostError`).

Cost, measured on the task path (``python bench/journal_cost.py``): two stores of ~40 bytes into the map per
task, well under a microsecond, with no system call (``write()`` calls released the GIL twice per task, which cost
the worker 21 µs of CPU per task in all on 2 cores); only redelivered messages pay for reading the journals (of
dead processes, and of live ones still running that task).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import mmap
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from amqptasks.errors import AmqpTasksError

log = logging.getLogger("amqptasks.worker")

#: Overrides where the journals live (tests; several workers that must not see each other's crashes).
ENV_JOURNAL_DIR = "AMQPTASKS_JOURNAL_DIR"
#: The length of a live journal's memory map; once full, it is rewritten to hold only the tasks running now.
JOURNAL_BYTES = 64 * 1024
#: A dead journal is forgotten after this long, charged or not (its tasks were never redelivered here).
DEAD_JOURNAL_TTL_S = 24 * 3600.0
#: A dead journal with nothing left to charge is kept this long (its supervisor reads it after the death).
SETTLED_JOURNAL_TTL_S = 60.0


def journal_dir() -> Path:
    given = os.environ.get(ENV_JOURNAL_DIR)
    if given:
        return Path(given)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "amqptasks"
    return Path(f"/tmp/amqptasks-{os.getuid()}")


def journal_paths(pid: int, directory: Path | None = None) -> list[Path]:
    """The journals process *pid* opened (a supervisor looks for its dead child's)."""
    return sorted((directory or journal_dir()).glob(f"{pid}-*.journal"))


class Journal:
    """This process's journal: ``started``/``finished`` around every task; ``close`` on a clean exit.

    The file is written through a shared memory map, not ``write()``: a store into the page cache that survives
    the process as a ``write()`` does, without a system call -- which on the task path released the GIL twice per
    task and let the task threads take it (21 µs of CPU per task measured on 2 cores, 14 % of the worker's).
    The map is :data:`JOURNAL_BYTES` long; what is not written yet reads as NUL bytes (:func:`parse` skips them),
    and it is rewritten in place to the tasks running now when it fills up.
    """

    def __init__(self, hostname: str, directory: Path | None = None) -> None:
        self.directory = directory or journal_dir()
        self.path = self.directory / f"{os.getpid()}-{secrets.token_hex(4)}.journal"
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX)  # blocking: a reader may hold it for a moment, never longer
            os.ftruncate(self._fd, JOURNAL_BYTES)
            self._map = mmap.mmap(self._fd, JOURNAL_BYTES, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            raise AmqpTasksError(
                f"cannot keep the worker's crash journal in {self.directory}: {exc.strerror}; set "
                f"{ENV_JOURNAL_DIR} to a writable local directory (it tells a task that killed its worker from "
                "the innocent ones)"
            ) from None
        self._header = f"W {hostname} {os.getpid()}\n".encode()
        self._running: set[str] = set()
        self._ready = False
        self._size = 0
        self._write(self._header)

    def ready(self) -> None:
        """Consuming has begun: a supervisor tells a process that died at start from one that died later."""
        self._ready = True
        self._write(b"R\n")

    def started(self, task_id: str) -> None:
        self._running.add(task_id)
        self._write(b"S " + task_id.encode("utf-8", "replace") + b"\n")

    def finished(self, task_id: str) -> None:
        self._running.discard(task_id)
        self._write(b"F " + task_id.encode("utf-8", "replace") + b"\n")

    def close(self) -> None:
        """A clean exit: nothing it ran killed it, so there is nothing to charge."""
        if self._fd < 0:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        self._map.close()
        os.close(self._fd)
        self._fd = -1

    def _write(self, data: bytes) -> None:
        if self._fd < 0:
            return
        end = self._size + len(data)
        if end > len(self._map):
            self._compact()  # *data* is in the state it is rebuilt from
            return
        self._map[self._size : end] = data
        self._size = end

    def _compact(self) -> None:
        """The map is full: rewrite it to what is running now. The new lines go first, then the old tail is
        cleared, so that a reader never sees a running task missing. Only this process writes a live journal."""
        running = (b"S " + task.encode("utf-8", "replace") + b"\n" for task in self._running)
        content = b"".join([self._header, *([b"R\n"] if self._ready else []), *running])
        if len(content) > len(self._map):  # more running than fits (huge ids): a bigger map
            size = 2 * max(len(content), len(self._map))
            os.ftruncate(self._fd, size)
            self._map.resize(size)
        old = self._size
        self._map[: len(content)] = content
        if old > len(content):
            self._map[len(content) : old] = bytes(old - len(content))
        self._size = len(content)


@dataclass(frozen=True)
class CrashNote:
    """A dead worker process that had started a task: which one, and how it died (when someone saw it)."""

    hostname: str
    pid: int
    how: str | None

    def __str__(self) -> str:
        how = self.how or "exit status unknown: it ended without a word (SIGKILL, os._exit, a segfault, OOM)"
        return f"worker {self.hostname} (pid {self.pid}) {how}"


@dataclass
class DeadJournal:
    path: Path
    hostname: str
    pid: int
    how: str | None
    ready: bool
    #: Started, not finished: what it was running when it died.
    running: set[str]
    #: Of those, the ones nobody has charged (or is charging) yet.
    suspects: set[str]


def read_dead(path: Path) -> DeadJournal | None:
    """The journal at *path* if its process is dead (its lock can be taken), else None."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return None  # alive
        data = path.read_bytes()
    finally:
        os.close(fd)
    return parse(path, data)


def parse(path: Path, data: bytes) -> DeadJournal:
    hostname, pid, how, ready = "?", 0, None, False
    started: set[str] = set()
    done: set[str] = set()  # charged already
    claims: dict[str, str] = {}
    for line in data.split(b"\n"):
        # The part of a live journal's map not written yet is NUL bytes (lines appended after its process died
        # come after them).
        kind, _, rest = line.strip(b"\x00").partition(b" ")
        text = rest.decode("utf-8", "replace")
        if kind == b"S":
            started.add(text)
        elif kind == b"F":
            started.discard(text)
            done.discard(text)
        elif kind == b"D":
            done.add(text)
        elif kind == b"C":
            key, _, claimer = text.partition(" ")
            claims[key] = claimer
        elif kind == b"R":
            ready = True
        elif kind == b"X":
            how = text
        elif kind == b"W":
            name, _, number = text.rpartition(" ")
            hostname, pid = name, int(number) if number.isdigit() else 0
    # A claim holds while its claimer lives: one that died mid-charge leaves the run to be charged by the next.
    suspects = (
        started - done - {key for key, claimer in claims.items() if key in started and _alive(path.parent / claimer)}
    )
    return DeadJournal(path, hostname, pid, how, ready, set(started), suspects)


def _alive(path: Path) -> bool:
    """The journal at *path* is held by a live process."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False  # gone: its process exited (cleanly, or it was cleaned up)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def append(path: Path, line: str) -> None:
    """Add a line to a dead journal (a charge, a supervisor's exit status); a vanished one is fine."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        try:
            os.write(fd, line.encode("utf-8", "replace") + b"\n")
        finally:
            os.close(fd)


class Crashes:
    """What the journals of dead worker processes (on this host) say about a redelivered message."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory or journal_dir()
        #: This process's own journal (its name): claims are made in its name, valid while it lives.
        self.claimer = ""

    def claim(self, key: str) -> tuple[CrashNote, Path] | None:
        """The dead process that was running *key* when it died, or None: the message is not to be charged. A
        found run is claimed at once (``C``): a duplicate of the message arriving meanwhile is not charged too;
        should this process die before :meth:`done`, the claim lapses with it."""
        for dead in self._dead():
            if key in dead.suspects:
                append(dead.path, f"C {key} {self.claimer}")
                return CrashNote(dead.hostname, dead.pid, dead.how), dead.path

        return None

    def running_in_a_live_process(self, key: str) -> bool:
        """A live process's journal says it is running *key* — or the process is dying right now, and the broker
        requeued its messages a moment before the kernel released its lock: worth asking again shortly."""
        try:
            paths = list(self.directory.glob("*.journal"))
        except OSError:
            return False
        needle = b"S " + key.encode("utf-8", "replace") + b"\n"
        for path in paths:
            if path.name == self.claimer or not _alive(path):
                continue
            try:
                data = path.read_bytes()  # unlocked: append-only, a torn last line is ignored
            except OSError:
                continue
            if needle in data and key in parse(path, data).running:
                return True
        return False

    def done(self, key: str, path: Path) -> None:
        """*key* has been charged (its counted copy confirmed, or it is dead-lettered)."""
        append(path, f"D {key}")

    def how(self, path: Path, note: CrashNote) -> CrashNote:
        """*note* with how its process died, if its supervisor has written it since."""
        dead = read_dead(path)
        return CrashNote(note.hostname, note.pid, dead.how) if dead is not None and dead.how else note

    def _dead(self) -> list[DeadJournal]:
        try:
            paths = list(self.directory.glob("*.journal"))
        except OSError:
            return []
        now, found = time.time(), []
        for path in paths:
            dead = read_dead(path)
            if dead is None:
                continue
            try:
                age = now - path.stat().st_mtime
            except OSError:
                continue
            if age > DEAD_JOURNAL_TTL_S or (not dead.suspects and age > SETTLED_JOURNAL_TTL_S):
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            if dead.suspects:
                found.append(dead)
        return found
