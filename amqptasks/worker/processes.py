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
- **A crashing task** (segfault, ``os._exit``, ``sys.exit``, the OOM killer) fails with ``WorkerLostError`` and
  its child is replaced; the worker keeps consuming.
- **max_tasks_per_child**: a child is retired after that many tasks and replaced (leaky tasks or libraries).
- Children ignore SIGINT, SIGTERM and SIGQUIT: Ctrl-C, or a signal sent to the whole process group (systemd's
  default ``KillMode``), does not kill running tasks; the worker's warm or cold shutdown decides. A child whose
  worker died exits after its current task, when its socket reaches end-of-file.

Pickle is used only here, between a worker and the children it forked itself, never on the wire. Exceptions are
rebuilt without calling their ``__init__`` (``Retry`` and ``Reject`` would not survive the default pickling); one
that cannot be pickled at all arrives as a ``RuntimeError`` carrying its repr. The child's traceback travels as a
note on the exception (``add_note``), so the worker's log shows where in the child it was raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import io
import logging
import multiprocessing
import os
import pickle
import signal
import socket
import struct
import threading
import time
import traceback
import types
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from amqptasks.errors import AmqpTasksError, Ignore, Reject, Retry, SoftTimeLimitExceeded, TimeLimitExceeded
from amqptasks.tasks import lineage
from amqptasks.worker import request as request_context
from amqptasks.worker.request import Request

if TYPE_CHECKING:
    from amqptasks.app import App

log = logging.getLogger("amqptasks.worker")

#: Every frame is its length (8 bytes, big-endian), then a pickle.
_HEADER = struct.Struct("!Q")
#: Shutdown signals belong to the worker, not to its children.
_WORKER_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGQUIT})
#: How long a shutdown waits for children to exit before it kills them.
_EXIT_WAIT = 2.0


class WorkerLostError(AmqpTasksError):
    """The child process running a task died before it answered (a crash, ``os._exit``, the OOM killer)."""


class _ChildLost(Exception):
    """The child's socket reached end-of-file or broke: the child is gone."""


# --- pickling between a worker and its own children ------------------------------------------------------


def _rebuild_exception(cls: type[BaseException], args: tuple[Any, ...], state: dict[str, Any]) -> BaseException:
    exc = cls.__new__(cls, *args)
    exc.args = args
    exc.__dict__.update(state)
    return exc


_DEFAULT_REDUCE: Any = BaseException.__reduce__


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        # The default pickling calls cls(*args) again: wrong for any __init__ that does not take its own args
        # back (Retry(exc, countdown) stores a message in args; Reject loses requeue=True).
        cls = type(obj)
        if (
            isinstance(obj, BaseException)
            and isinstance(cls.__init__, types.FunctionType)
            and cls.__reduce__ is _DEFAULT_REDUCE
        ):
            return _rebuild_exception, (cls, obj.args, dict(obj.__dict__))
        return NotImplemented


def _dumps(obj: Any) -> bytes:
    buffer = io.BytesIO()
    buffer.write(_HEADER.pack(0))
    _Pickler(buffer, pickle.HIGHEST_PROTOCOL).dump(obj)
    frame = buffer.getbuffer()
    frame[: _HEADER.size] = _HEADER.pack(len(frame) - _HEADER.size)
    return bytes(frame)


def _describe(status: int | None) -> str:
    if status is None:
        return "closed its end of the pipe"
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        return f"was killed by signal {signal.Signals(-code).name}"
    return f"exited with code {code}"


#: What a task publishing from a child imports on first use. A module another thread is importing at the moment
#: of a fork stays locked in the child for ever (the child has no such thread to finish it), so a child that
#: imported it lazily would hang: they are imported in the worker before any child is forked.
_PRELOAD = (
    "amqptasks.publish.sync", "amqptasks.publish.pipeline", "amqptasks.publish.retry", "amqptasks.canvas",
    "amqptasks.delays.tiers", "amqptasks.results", "amqptasks.results.chord", "amqptasks.results.middleware",
)  # fmt: skip


def _preload() -> None:
    for name in _PRELOAD:
        importlib.import_module(name)


# --- the child -------------------------------------------------------------------------------------------


def _child(app: App, sock: socket.socket, inherited: Iterable[socket.socket], number: int) -> NoReturn:
    """The forked child: serve tasks until end-of-file, then exit. Never returns into the worker's code."""
    code = 1
    try:
        for other in inherited:  # else a sibling's end-of-file would never come
            other.close()
        process = multiprocessing.current_process()
        process.name = f"{process.name}/child-{number}"  # what a task's log lines show as %(processName)s
        code = _serve(app, sock)
    except SystemExit as exc:  # sys.exit() in a task ends the child, like os._exit()
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        with contextlib.suppress(BaseException):
            traceback.print_exc()
    finally:
        os._exit(code)


def _serve(app: App, sock: socket.socket) -> int:
    signal.set_wakeup_fd(-1)  # the worker loop's wakeup pipe: our signals are not the worker's
    for signum in _WORKER_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _WORKER_SIGNALS)
    _forget_parent_connections(app)
    sock.setblocking(True)
    try:
        while (job := _read_blocking(sock)) is not None:
            sock.sendall(_run(app, job))
    except OSError:  # the worker is gone
        pass
    finally:
        with contextlib.suppress(Exception):
            app.close()  # a publisher this child opened (tasks that send tasks)
    return 0


def _forget_parent_connections(app: App) -> None:
    # The worker's publishers own sockets (and maybe a lock held by another thread at the fork); using them here
    # would interleave frames with the worker's. A task that publishes opens this child's own connection.
    app._publisher = None
    app._aio_publishers = {}
    app._lock = threading.Lock()


def _read_blocking(sock: socket.socket) -> bytes | None:
    header = _read_exactly_blocking(sock, _HEADER.size)
    if header is None:
        return None
    (size,) = _HEADER.unpack(header)
    return _read_exactly_blocking(sock, size) if size else None


def _read_exactly_blocking(sock: socket.socket, size: int) -> bytes | None:
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        count = sock.recv_into(view[got:])
        if count == 0:
            return None
        got += count
    return bytes(buffer)


def _run(app: App, job: bytes) -> bytes:
    """One task in the child; the reply is ``(ok, result or exception, children)``: what the task published is
    recorded here, in the child, and merged into the parent's record (:mod:`amqptasks.tasks.lineage`)."""
    try:
        name, args, kwargs, request, soft = pickle.loads(job)
    except Exception as exc:
        return _error_reply(RuntimeError(f"the child process could not unpickle the task: {exc!r}"), [])
    token = request_context.current.set(request)
    lineage.begin(request.id)
    try:
        with _soft_limit(soft):
            value = app.tasks[name].run_callable()(*args, **kwargs)
    except Exception as exc:
        return _error_reply(exc, lineage.take(request.id))
    finally:
        request_context.current.reset(token)
    children = lineage.take(request.id)
    try:
        return _dumps((True, value, children))
    except Exception as exc:
        why = RuntimeError(f"{name}: its result cannot be sent back from the child process: {exc!r}")
        return _error_reply(why, children)


@contextlib.contextmanager
def _soft_limit(seconds: float | None) -> Iterator[None]:
    if not seconds:
        yield
        return

    def expire(signum: int, frame: types.FrameType | None) -> None:
        raise SoftTimeLimitExceeded(f"soft time limit ({seconds:g} s) exceeded")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _error_reply(exc: Exception, children: list[Any]) -> bytes:
    if not isinstance(exc, Retry | Reject | Ignore):
        exc.add_note(f"--- in pool child process {os.getpid()}:\n" + "".join(traceback.format_exception(exc)).rstrip())
    try:
        reply = _dumps((False, exc, children))
        pickle.loads(reply[_HEADER.size :])  # an __init__ or a class that cannot come back fails here, not there
        return reply
    except Exception as why:
        replacement = RuntimeError(f"{exc!r} (cannot be sent back from the child process: {why!r})")
        for note in getattr(exc, "__notes__", ()):
            replacement.add_note(str(note))
        return _dumps((False, replacement, children))


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
        _preload()
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
            job = _dumps((name, args, kwargs, request, soft))
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
            raise WorkerLostError(f"the child process running it ({child.pid}) {how}") from None
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
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _WORKER_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                _child(self.app, theirs, [ours, *(c.sock for c in self._children.values())], self._spawned + 1)
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
        (size,) = _HEADER.unpack(await _read_exactly(loop, child.sock, _HEADER.size))
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
