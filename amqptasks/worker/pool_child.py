"""The child side of ``--pool processes`` (see :mod:`amqptasks.worker.processes`): what a forked child runs.

A child reads ``(task name, args, kwargs, request, soft limit)`` frames from its socket, runs the task it finds
by name in the app it inherited through the fork, and writes back ``(ok, result or exception, children)``. Every
frame is its length (8 bytes, big-endian), then a pickle: pickle is used only between a worker and the children
it forked itself, never on the wire.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import multiprocessing
import os
import pickle
import signal
import socket
import struct
import traceback
import types
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, NoReturn

from amqptasks.errors import Ignore, Reject, Retry, SoftTimeLimitExceeded
from amqptasks.tasks import lineage
from amqptasks.worker import request as request_context

if TYPE_CHECKING:
    from amqptasks.app import App

#: Every frame is its length (8 bytes, big-endian), then a pickle.
HEADER = struct.Struct("!Q")
#: Shutdown signals belong to the worker, not to its children.
WORKER_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGQUIT})


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


def dumps(obj: Any) -> bytes:
    buffer = io.BytesIO()
    buffer.write(HEADER.pack(0))
    _Pickler(buffer, pickle.HIGHEST_PROTOCOL).dump(obj)
    frame = buffer.getbuffer()
    frame[: HEADER.size] = HEADER.pack(len(frame) - HEADER.size)
    return bytes(frame)


#: What a task publishing from a child imports on first use. A module another thread is importing at the moment
#: of a fork stays locked in the child for ever (the child has no such thread to finish it), so a child that
#: imported it lazily would hang: they are imported in the worker before any child is forked.
PRELOAD = (
    "amqptasks.broker.rabbitmq.blocking", "amqptasks.broker.rabbitmq.pipeline", "amqptasks.broker.retry",
    "amqptasks.publish.sync", "amqptasks.canvas",
    "amqptasks.delays.tiers", "amqptasks.results", "amqptasks.results.chord", "amqptasks.results.middleware",
)  # fmt: skip


def preload() -> None:
    for name in PRELOAD:
        importlib.import_module(name)


# --- the child -------------------------------------------------------------------------------------------


def run_child(app: App, sock: socket.socket, inherited: Iterable[socket.socket], number: int) -> NoReturn:
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
    for signum in WORKER_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, WORKER_SIGNALS)
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


def _read_blocking(sock: socket.socket) -> bytes | None:
    header = _read_exactly_blocking(sock, HEADER.size)
    if header is None:
        return None
    (size,) = HEADER.unpack(header)
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
        return dumps((True, value, children))
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
        reply = dumps((False, exc, children))
        pickle.loads(reply[HEADER.size :])  # an __init__ or a class that cannot come back fails here, not there
        return reply
    except Exception as why:
        replacement = RuntimeError(f"{exc!r} (cannot be sent back from the child process: {why!r})")
        for note in getattr(exc, "__notes__", ()):
            replacement.add_note(str(note))
        return dumps((False, replacement, children))
