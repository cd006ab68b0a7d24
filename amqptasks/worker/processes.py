"""``--pool processes``: sync tasks run in forked child processes, which can be killed and replaced.

The worker forks ``concurrency`` children when it starts. Each child holds one end of a socket pair and runs one
task at a time: the worker sends it ``(task name, args, kwargs, request, soft limit)``, the child looks the task up
by name in the app it inherited through the fork, runs it with ``self.request`` set, and sends back its result or
its exception. The function itself never travels: ``@app.task`` replaces the module attribute with the Task, so a
function cannot be pickled by reference, and the child already has it.

What this pool guarantees for sync tasks (``async def`` tasks still run on the worker's event loop):

- **Soft limit**: ``SoftTimeLimitExceeded`` is raised inside the task by ``SIGALRM``, in Python code and in
  interruptible blocking calls (``time.sleep``, socket reads), but not inside C code that never checks for
  signals. The task may catch it, clean up and return.
- **Hard limit**: the child is killed with ``SIGKILL`` whatever it is doing; the task fails with
  ``TimeLimitExceeded`` (so its message goes down the failure path) and a fresh child takes its place. Tasks in
  other children are not affected.
- **A crashing task** (segfault, ``os._exit``, ``sys.exit``, the OOM killer) raises ``WorkerLostError`` and its
  child is replaced; the worker keeps consuming. The worker charges the task one "killed its worker" attempt: it
  runs again (as a counted copy) up to ``max_redeliveries`` times, then goes to its DLQ as ``worker-lost``.
- **max_tasks_per_child**: a child is retired after that many tasks and replaced (leaky tasks or libraries).
- Children ignore SIGINT, SIGTERM and SIGQUIT: Ctrl-C, or a signal sent to the whole process group (systemd's
  default ``KillMode``), does not kill running tasks; the worker's warm or cold shutdown decides. A child whose
  worker died exits after its current task, when its socket reaches end-of-file.

Pickle is used only here and in :mod:`amqptasks.worker.pool_child` (the child's side), between a worker and the
children it forked itself, never on the wire. Exceptions are rebuilt without calling their ``__init__``
(``Retry`` and ``Reject`` would not survive the default pickling); one that cannot be pickled at all arrives as
a ``RuntimeError`` carrying its repr. The child's traceback travels as a note on the exception (``add_note``),
so the worker's log shows where in the child it was raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from amqptasks.errors import AmqpTasksError, TimeLimitExceeded
from amqptasks.tasks import lineage
from amqptasks.worker.pool_child import HEADER, WORKER_SIGNALS, dumps, preload, run_child
from amqptasks.worker.request import Request

if TYPE_CHECKING:
    from amqptasks.app import App

log = logging.getLogger("amqptasks.worker")

#: How long a shutdown waits for children to exit before it kills them.
_EXIT_WAIT = 2.0


class WorkerLostError(AmqpTasksError):
    """The child process running a task died before it answered (a crash, ``os._exit``, the OOM killer)."""


class _ChildLost(Exception):
    """The child's socket reached end-of-file or broke: the child is gone."""


def _describe(status: int | None) -> str:
    if status is None:
        return "closed its end of the pipe"
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        return f"was killed by signal {signal.Signals(-code).name}"
    return f"exited with code {code}"


# --- the worker's side -----------------------------------------------------------------------------------


@dataclass(eq=False)
class _Child:
    pid: int
    sock: socket.socket  # the worker's end, non-blocking
    tasks: int = 0


class ProcessPool:
    """``size`` forked children running sync tasks by name, one at a time each; see the module docstring."""

    def __init__(self, app: App, size: int, max_tasks_per_child: int | None = None) -> None:
        if size < 1:
            raise ValueError(f"a process pool needs at least one child, not {size}")
        if max_tasks_per_child is not None and max_tasks_per_child < 1:
            raise ValueError(f"max_tasks_per_child must be at least 1, not {max_tasks_per_child}")
        self.app = app
        self.max_tasks_per_child = max_tasks_per_child
        preload()
        self._children: dict[int, _Child] = {}
        self._idle: asyncio.Queue[_Child] = asyncio.Queue()
        self._zombies: set[int] = set()
        self._spawned = 0
        self._closed = False
        for _ in range(size):
            self._idle.put_nowait(self._spawn())

    @property
    def pids(self) -> list[int]:
        """The live children's process ids."""
        return sorted(self._children)

    async def run(
        self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], request: Request,
        soft: float | None, hard: float | None,
    ) -> Any:  # fmt: skip
        """Run task *name* in a child; its result, or its exception raised here.

        Once the pool is shut down (or when shutdown kills the child running it), this raises
        ``asyncio.CancelledError``: the task did not finish, so its message must stay unsettled and go back to
        its queue, not down the failure path.
        """
        try:
            job = dumps((name, args, kwargs, request, soft))
        except Exception as exc:
            raise AmqpTasksError(f"{name}[{request.id}]: cannot hand it to a child process: {exc!r}") from None
        child = await self._checkout(job)
        label = f"{name}[{request.id}]"
        try:
            ok, value, children = await asyncio.wait_for(self._reply(child), hard)
        except TimeoutError:
            self._discard(child, kill=True)
            log.warning("%s: hard time limit (%g s): killed its child process %d", label, hard, child.pid)
            message = f"hard time limit ({hard:g} s) exceeded; its child process {child.pid} was killed"
            raise TimeLimitExceeded(message) from None
        except _ChildLost:
            if self._closed:  # killed by shutdown: unsettled, the message goes back to its queue
                self._discard(child, kill=False)
                raise asyncio.CancelledError() from None
            status = None
            try:
                status = await self._exit_status(child.pid)
            finally:  # no exit status: it closed the socket yet lives on, so it is killed
                self._discard(child, kill=status is None, reaped=status is not None)
            how = _describe(status)
            log.error("%s: its child process %d %s; a fresh child replaces it", label, child.pid, how)
            raise WorkerLostError(f"the child process running it (pid {child.pid}) {how}") from None
        except BaseException:  # cancelled mid-task: the child's state is unknown
            self._discard(child, kill=True)
            raise
        self._checkin(child)
        lineage.extend(request.id, children)
        if ok:
            return value
        raise value

    def shutdown(self, wait: bool) -> None:
        """Stop the children. Idle ones exit at once; running ones are killed, or with *wait* finish their task.

        The worker uses ``wait=False``: ``wait=True`` blocks until every running task is done, and on the loop
        those tasks were started from, a reply bigger than the socket buffer would wait for ever to be read.
        """
        if self._closed:
            return
        self._closed = True
        while not self._idle.empty():
            child = self._idle.get_nowait()
            del self._children[child.pid]
            child.sock.close()  # end-of-file: it exits
            self._zombies.add(child.pid)
        for child in self._children.values():  # busy: run() closes their sockets when it sees them go
            if wait:
                with contextlib.suppress(OSError):
                    child.sock.shutdown(socket.SHUT_WR)  # end-of-file after its current task
            else:
                _kill(child.pid)
            self._zombies.add(child.pid)
        self._reap(timeout=None if wait else _EXIT_WAIT)

    # --- inside ------------------------------------------------------------------------------------------

    def _spawn(self) -> _Child:
        ours, theirs = socket.socketpair()
        # Blocked across the fork, so no worker signal handler can run in the child before it ignores them.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, WORKER_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                run_child(self.app, theirs, [ours, *(c.sock for c in self._children.values())], self._spawned + 1)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        theirs.close()
        ours.setblocking(False)
        self._spawned += 1
        child = _Child(pid, ours)
        self._children[pid] = child
        return child

    async def _checkout(self, job: bytes) -> _Child:
        """An idle child that took *job*; one that died while idle is replaced (the task never started)."""
        loop = asyncio.get_running_loop()
        while True:
            if self._closed:
                raise asyncio.CancelledError("the process pool is shut down")
            child = await self._idle.get()
            try:
                await loop.sock_sendall(child.sock, job)
                return child
            except OSError as exc:
                log.warning("child process %d died while idle (%s); a fresh child replaces it", child.pid, exc)
                self._discard(child, kill=True)
            except BaseException:  # cancelled mid-frame: the child would read garbage
                self._discard(child, kill=True)
                raise

    async def _reply(self, child: _Child) -> tuple[bool, Any, list[Any]]:
        loop = asyncio.get_running_loop()
        (size,) = HEADER.unpack(await _read_exactly(loop, child.sock, HEADER.size))
        data = await _read_exactly(loop, child.sock, size)
        try:
            reply: tuple[bool, Any, list[Any]] = pickle.loads(data)
        except Exception as exc:
            return False, RuntimeError(f"the reply of child process {child.pid} cannot be unpickled: {exc!r}"), []
        return reply

    def _checkin(self, child: _Child) -> None:
        child.tasks += 1
        if self._closed:  # shutdown(wait=True) let it finish this task; it has exited since
            self._discard(child, kill=False)
        elif self.max_tasks_per_child is not None and child.tasks >= self.max_tasks_per_child:
            log.debug("child process %d retired after %d task(s)", child.pid, child.tasks)
            self._discard(child, kill=False)  # end-of-file: it exits
        else:
            self._idle.put_nowait(child)
        self._reap(timeout=0)

    def _discard(self, child: _Child, *, kill: bool, reaped: bool = False) -> None:
        """Forget *child* (killing it first if asked) and put a fresh one in its place."""
        self._children.pop(child.pid, None)
        child.sock.close()
        if self._closed:  # shutdown() stopped and reaped every child: its pid may belong to someone else by now
            return
        if kill:
            _kill(child.pid)
        if not reaped:
            self._zombies.add(child.pid)
        self._idle.put_nowait(self._spawn())

    async def _exit_status(self, pid: int) -> int | None:
        """The wait status of a child that just closed its socket (it is exiting), or None after a second."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.0
        while True:
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                return None
            if done:
                return status
            if loop.time() > deadline:
                return None
            await asyncio.sleep(0.01)

    def _reap(self, timeout: float | None) -> None:
        """Collect exited children; wait up to *timeout* (None: for ever) for them, then kill what is left."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._zombies:
            for pid in list(self._zombies):
                try:
                    done, _ = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    done = pid
                if done:
                    self._zombies.discard(pid)
            if not self._zombies or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(0.01)
        if timeout:  # a shutdown that gave them time: whatever has not exited is killed
            for pid in self._zombies:
                _kill(pid)
            for pid in list(self._zombies):
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
                self._zombies.discard(pid)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


async def _read_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, size: int) -> bytes:
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        try:
            count = await loop.sock_recv_into(sock, view[got:])
        except OSError as exc:
            raise _ChildLost() from exc
        if count == 0:
            raise _ChildLost()
        got += count
    return bytes(buffer)
