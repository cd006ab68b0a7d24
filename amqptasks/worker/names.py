"""Worker names (``-n/--hostname``): warn when another live worker answers to the same one.

Control replies, ``inspect`` output, events and monitoring tell workers apart by name only, so two workers
sharing one (two hosts with the same hostname, or two workers started with the same ``-n``) look like one.
Like Celery's DuplicateNodenameWarning, this is a warning: the worker still runs.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import socket
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from amqptasks.config.model import Config

log = logging.getLogger("amqptasks.worker")

_FORMAT = re.compile(r"%([hnd%])")


def expand_hostname(name: str, host: str | None = None) -> str:
    """``-n`` with Celery's abbreviations: ``%h`` the host name, ``%n`` its first label, ``%d`` its domain, ``%%``
    a %. Unlike Celery, a name without ``@`` is kept as it is (it was always used as given)."""
    host = host or socket.gethostname()
    short, _, domain = host.partition(".")
    values = {"h": host, "n": short, "d": domain, "%": "%"}
    return _FORMAT.sub(lambda m: values[m.group(1)], name)


#: Seconds the check listens for the other workers' replies.
REPLY_WINDOW = 1.5


def others_named(replies: list[dict[str, Any]], hostname: str, pid: int, siblings_of: int | None) -> list[int]:
    """Pids of the other live workers named *hostname* among ``stats`` replies (not this process, nor, for a
    worker started with ``--processes N``, its siblings: children of the same parent *siblings_of*)."""
    found = []
    for reply in replies:
        stats = reply.get("ok")
        if reply.get("hostname") != hostname or not isinstance(stats, dict):
            continue
        other = stats.get("pid")
        if other == pid or (siblings_of is not None and stats.get("ppid") == siblings_of):
            continue
        found.append(int(other) if isinstance(other, int) else -1)
    return found


def warn_if_shared(config: Config, hostname: str) -> threading.Thread:
    """Ask the live workers for their stats, in a daemon thread (a shutdown never waits for it); warn if another
    one is named *hostname*. Never raises."""
    thread = threading.Thread(target=_check, args=(config, hostname), name="amqptasks-name-check", daemon=True)
    thread.start()
    return thread


def _check(config: Config, hostname: str) -> None:
    from amqptasks.control.client import broadcast

    try:
        replies = broadcast(config, "stats", timeout=REPLY_WINDOW)
    except Exception as exc:  # a check, not a duty: the worker runs anyway
        log.debug("could not check for other workers named %r (%r)", hostname, exc)
        return
    siblings_of = os.getppid() if multiprocessing.parent_process() is not None else None
    others = others_named(replies, hostname, os.getpid(), siblings_of)
    if others:
        log.warning(
            "another live worker is named %r (pid %s): control replies, inspect, events and monitoring cannot tell "
            "them apart; give each worker its own name with -n/--hostname (e.g. -n billing-1@%%h)",
            hostname, ", ".join(str(p) for p in others),
        )  # fmt: skip
