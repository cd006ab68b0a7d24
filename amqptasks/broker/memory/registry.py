"""``memory://`` URLs → the in-memory broker they name, in this process.

``memory://`` is one broker per process, shared by every app that uses the URL (as one RabbitMQ vhost would be);
``memory://NAME`` is another one, so tests that want a broker of their own give it a name (the pytest plugin
does). Brokers are made on first use and live until :func:`forget`. Their clock is a :class:`VirtualClock`
that follows the wall clock, so time passes as usual and ``advance()`` (``drain(advance_time=True)``) jumps ahead.
A broker is in-process only: another process (a worker started with ``amqptasks worker``) cannot reach it.
"""

from __future__ import annotations

import threading

from amqptasks.broker.memory.broker import MemoryBroker
from amqptasks.broker.memory.clock import VirtualClock

__all__ = ["SCHEME", "broker_for", "forget", "is_memory_url", "memory_name"]

SCHEME = "memory"
_brokers: dict[str, MemoryBroker] = {}
_lock = threading.Lock()


def is_memory_url(url: str) -> bool:
    return url.strip().lower().startswith(f"{SCHEME}://")


def memory_name(url: str) -> str:
    """The broker's name in ``memory://NAME`` ("" for plain ``memory://``); ``ValueError`` for another shape."""
    text = url.strip()
    scheme, sep, rest = text.partition("://")
    if not sep or scheme.lower() != SCHEME:
        raise ValueError(f"not a memory:// URL: {text!r}")
    name = rest.rstrip("/")
    if "/" in name or "?" in name or "#" in name or "@" in name:
        raise ValueError(f"memory URL {text!r}: expected memory:// or memory://NAME (a name without '/', '?', '@')")
    return name


def broker_for(url: str) -> MemoryBroker:
    """The broker *url* names, made on first use."""
    name = memory_name(url)
    with _lock:
        broker = _brokers.get(name)
        if broker is None:
            broker = _brokers[name] = MemoryBroker(name or "/", VirtualClock(follow_wall=True))
        return broker


def forget(url: str) -> None:
    """Drop the broker *url* names (the next use makes an empty one)."""
    with _lock:
        _brokers.pop(memory_name(url), None)
