"""Celery's remote-control protocol (kombu's pidbox "mailbox"), as data: names, requests and replies (pure).

The one control protocol on the wire, for ``celery inspect``/``celery control``/``celery status``, Flower, and
``amqptasks inspect``/``control`` alike (kombu/pidbox.py, celery/app/control.py):

- A command is published to the fanout exchange ``celery.pidbox`` (transient, non-durable) as JSON
  ``{method, arguments, destination, pattern, matcher}``; a command that wants replies adds ``ticket`` (a uuid)
  and ``reply_to: {exchange: "reply.celery.pidbox", routing_key: <sender oid>}``. Headers: ``clock`` and
  ``expires`` (epoch seconds; 0 = never).
- Each worker consumes its own queue ``<hostname>.celery.pidbox`` bound to that exchange, runs the command if
  ``destination`` lists it (or its hostname matches ``pattern``, or neither is given), and replies
  ``{hostname: reply}`` to ``reply_to`` with the header ``ticket``.
- The sender collects replies on a queue of its own bound to the direct exchange ``reply.celery.pidbox`` with
  its oid, keeping those whose ticket is its own.
"""

from __future__ import annotations

import fnmatch
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Celery's ``control_exchange`` setting ("celery") makes both names.
EXCHANGE = "celery.pidbox"
REPLY_EXCHANGE = "reply.celery.pidbox"
#: Celery's ``control_queue_ttl`` (300 s) and ``control_queue_expires`` (10 s), in ms, for a worker's queue.
QUEUE_ARGUMENTS = {"x-message-ttl": 300_000, "x-expires": 10_000}
#: The reply queue of a sender: its replies expire fast, the queue soon after the sender goes.
REPLY_QUEUE_ARGUMENTS = {"x-message-ttl": 300_000, "x-expires": 10_000}


def queue_name(hostname: str) -> str:
    return f"{hostname}.celery.pidbox"


def reply_queue_name(oid: str) -> str:
    return f"{oid}.{REPLY_EXCHANGE}"


@dataclass(frozen=True)
class Command:
    method: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    destination: Sequence[str] | None = None
    pattern: str | None = None
    matcher: str | None = None
    ticket: str | None = None
    reply_to: Mapping[str, str] | None = None

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"method": self.method, "arguments": dict(self.arguments),
                                "destination": list(self.destination) if self.destination else None,
                                "pattern": self.pattern, "matcher": self.matcher}  # fmt: skip
        if self.ticket is not None:
            body.update(ticket=self.ticket, reply_to=dict(self.reply_to or {}))
        return body

    def is_for(self, hostname: str) -> bool:
        """kombu ``Node.handle_message``: a destination list, else a pattern, else everyone."""
        if self.destination:
            return hostname in self.destination
        if self.pattern and self.matcher:
            return matches(hostname, self.pattern, self.matcher)
        return True


def matches(hostname: str, pattern: str, matcher: str) -> bool:
    """kombu.utils.functional.match: ``glob`` or ``pcre``."""
    if matcher == "glob":
        return fnmatch.fnmatchcase(hostname, pattern)
    if matcher == "pcre":
        return re.search(pattern, hostname) is not None
    return False


def request(method: str, arguments: Mapping[str, Any] | None = None, *, reply_to_oid: str | None = None,
            destination: Sequence[str] | None = None) -> Command:  # fmt: skip
    """A command; with *reply_to_oid*, one that wants replies (it gets a fresh ticket)."""
    if reply_to_oid is None:
        return Command(method, dict(arguments or {}), destination)
    reply_to = {"exchange": REPLY_EXCHANGE, "routing_key": reply_to_oid}
    return Command(method, dict(arguments or {}), destination, ticket=str(uuid.uuid4()), reply_to=reply_to)


def headers(timeout: float | None) -> dict[str, Any]:
    # Whole seconds, rounded up: pika cannot send a float header (kombu sends a double).
    return {"clock": 1, "expires": int(time.time() + timeout) + 1 if timeout else 0}


def parse(body: Any) -> Command:
    """A received command; ``ValueError`` says why it is not one."""
    if not isinstance(body, Mapping) or not isinstance(body.get("method"), str):
        raise ValueError("not a pidbox command: no 'method'")
    arguments = body.get("arguments") or {}
    if not isinstance(arguments, Mapping):
        raise ValueError("not a pidbox command: 'arguments' is not a mapping")
    reply_to = body.get("reply_to")
    if reply_to is not None and not (isinstance(reply_to, Mapping) and "exchange" in reply_to
                                     and "routing_key" in reply_to):  # fmt: skip
        raise ValueError("not a pidbox command: 'reply_to' needs exchange and routing_key")
    destination = body.get("destination")
    return Command(
        str(body["method"]), dict(arguments),
        [str(d) for d in destination] if isinstance(destination, list | tuple) else None,
        body.get("pattern"), body.get("matcher"), body.get("ticket"), reply_to,
    )  # fmt: skip


def expired(message_headers: Mapping[str, Any] | None) -> bool:
    expires: Any = (message_headers or {}).get("expires")
    try:
        return bool(expires) and time.time() > float(expires)
    except (TypeError, ValueError):
        return False


def normalize(hostname: str, reply: Any) -> dict[str, Any]:
    """One worker's reply as ``amqptasks inspect`` shows it: ``{hostname, ok}`` or ``{hostname, error}``.

    Celery wraps control replies as ``{"ok": ...}``/``{"error": ...}`` and sends inspect replies bare (a list,
    a dict of stats)."""
    if isinstance(reply, Mapping) and len(reply) == 1 and ("ok" in reply or "error" in reply):
        return {"hostname": hostname, **reply}
    return {"hostname": hostname, "ok": reply}
