"""What a forked child must forget: connections, threads and locks it inherited from its parent.

After ``os.fork()`` the child holds copies of the parent's sockets (one TCP stream with two writers: the broker sees
interleaved frames, and the confirm for one process's message is read by the other), of locks another thread may
have held at the fork (held for ever in the child), and thread objects whose threads do not exist there. Every
object that holds such things registers a method here; in the child it runs once, right after the fork
(``os.register_at_fork``), for gunicorn ``--preload``, uWSGI, ``multiprocessing``'s fork start method and our own
process pool alike.

Only weak references are kept: registering never keeps an app alive. What a child forgets is *kept* in
:data:`_inherited` instead of being closed or garbage-collected: closing a pika or aio-pika connection in the child
would send Connection.Close on the parent's socket, and a finalizer may do the same.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["keep_inherited", "on_fork_in_child"]

log = logging.getLogger("amqptasks")

_registered: list[weakref.WeakMethod[Callable[[], None]]] = []
_registry_lock = threading.Lock()
#: Objects a child inherited and must neither use nor close (see the module docstring).
_inherited: list[Any] = []


def on_fork_in_child(method: Callable[[], None]) -> None:
    """Call the bound *method* in every child forked after now (its object held weakly)."""
    with _registry_lock:
        _registered[:] = [each for each in _registered if each() is not None]
        _registered.append(weakref.WeakMethod(method))


def keep_inherited(*objects: Any) -> None:
    """Keep *objects* referenced for ever in this (child) process, unused: no finalizer may touch their sockets."""
    _inherited.extend(each for each in objects if each is not None)


def _after_fork_in_child() -> None:
    global _registry_lock
    _registry_lock = threading.Lock()  # another thread may have held it at the fork
    for ref in list(_registered):
        method = ref()
        if method is None:
            continue
        try:
            method()
        except Exception:  # one object failing to reset must not leave the others half-inherited
            log.exception("resetting %r after fork failed", method)


os.register_at_fork(after_in_child=_after_fork_in_child)
