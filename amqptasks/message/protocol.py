"""Celery's task message protocol, version 2 (pure).

Properties: ``correlation_id`` = task id, ``content_type``/``content_encoding``, ``reply_to``, ``priority``.
Headers: lang, task, id, shadow, eta, expires, group, group_index, retries, timelimit [hard, soft],
root_id, parent_id, argsrepr, kwargsrepr, origin, ignore_result. Body: ``[args, kwargs, embed]`` where
embed holds callbacks, errbacks, chain and chord. A Celery 5 client and worker read what we write.
"""

from __future__ import annotations

import decimal
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from amqptasks.constants import DECOMPRESSED_SIZE_FACTOR
from amqptasks.message.envelope import Envelope
from amqptasks.message.errors import EncodeError, MessageError
from amqptasks.message.serialize import (
    Compression,
    Serializer,
    compress,
    content_type,
    culprit,
    decompress,
    dumps,
    loads,
)

#: Headers the broker adds when dead-lettering. A re-published task must not carry them: RabbitMQ drops a
#: message whose x-death shows it already went round a dead-letter cycle (Celery #9867).
DEATH_HEADERS = frozenset(
    {
        "x-death",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-first-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
        "x-last-death-exchange",
    }
)
_REPR_LIMIT = 1024
#: Headers the protocol itself defines; any other header is passed through as ``extra_headers``.
_PROTOCOL_HEADERS = frozenset(
    {"lang", "task", "id", "shadow", "eta", "expires", "group", "group_index", "retries", "timelimit", "root_id",
     "parent_id", "argsrepr", "kwargsrepr", "origin", "ignore_result", "compression"}
)  # fmt: skip


_ORIGIN = ""


def _set_origin() -> None:
    global _ORIGIN
    _ORIGIN = f"{os.getpid()}@{socket.gethostname()}"


_set_origin()
# A forked child (processes pool) is another process: set again there, not looked up for every message.
os.register_at_fork(after_in_child=_set_origin)


def origin() -> str:
    """``pid@host`` of this process."""
    return _ORIGIN


@dataclass(frozen=True)
class TaskMessage:
    """One task invocation as it travels: what to run, with what, and its place in a workflow."""

    id: str
    task: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    eta: datetime | None = None
    expires: datetime | None = None
    retries: int = 0
    root_id: str | None = None
    parent_id: str | None = None
    group: str | None = None
    group_index: int | None = None
    #: ``(time_limit, soft_time_limit)``: the hard limit first, as Celery's header and its ``request.timelimit``.
    timelimit: tuple[float | None, float | None] = (None, None)
    ignore_result: bool = False
    callbacks: tuple[Mapping[str, Any], ...] = ()
    errbacks: tuple[Mapping[str, Any], ...] = ()
    chain: tuple[Mapping[str, Any], ...] = ()
    chord: Mapping[str, Any] | None = None
    reply_to: str | None = None
    origin: str = field(default_factory=origin)
    #: Headers beyond the protocol's (user-given ``headers=``), passed through as they are.
    extra_headers: Mapping[str, Any] = field(default_factory=dict)

    def headers(self) -> dict[str, Any]:
        """The AMQP headers. Celery reads every header with ``.get()``, so the empty ones (None, and a timelimit
        of two Nones) are left out: the same to every reader, and less to encode, send and route."""
        headers: dict[str, Any] = {}
        if self.extra_headers:
            # A task is always published fresh: no x-death (cycle detection) and none of our delay routing
            # headers (the unroutable-catching alternate exchange keys on them). The protocol's own headers
            # come from the fields below, never from here.
            headers.update(
                (k, v)
                for k, v in self.extra_headers.items()
                if v is not None
                and k not in _PROTOCOL_HEADERS
                and k not in DEATH_HEADERS
                and not k.startswith("amqptasks.")
            )
        headers["lang"] = "py"
        headers["task"] = self.task
        headers["id"] = self.id
        if self.eta is not None:
            headers["eta"] = self.eta.isoformat()
        if self.expires is not None:
            headers["expires"] = self.expires.isoformat()
        if self.group is not None:
            headers["group"] = self.group
        if self.group_index is not None:
            headers["group_index"] = self.group_index
        headers["retries"] = self.retries
        if self.timelimit[0] is not None or self.timelimit[1] is not None:
            headers["timelimit"] = list(self.timelimit)
        headers["root_id"] = self.root_id or self.id
        if self.parent_id is not None:
            headers["parent_id"] = self.parent_id
        headers["argsrepr"] = _short_repr(self.args)
        headers["kwargsrepr"] = _short_repr(dict(self.kwargs)) if self.kwargs else "{}"
        headers["origin"] = self.origin
        headers["ignore_result"] = self.ignore_result
        return headers

    def body(self) -> list[Any]:
        embed = {
            "callbacks": list(self.callbacks) or None,
            "errbacks": list(self.errbacks) or None,
            "chain": list(self.chain) or None,
            "chord": self.chord,
        }
        return [list(self.args), dict(self.kwargs), embed]


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _REPR_LIMIT else text[: _REPR_LIMIT - 3] + "..."


def to_envelope(
    message: TaskMessage,
    *,
    exchange: str,
    routing_key: str,
    priority: int | None = None,
    serializer: Serializer = "json",
    compression: Compression | None = None,
    max_size: int | None = None,
    mandatory: bool = True,
) -> Envelope:
    try:
        body = dumps(message.body(), serializer)
    except (TypeError, ValueError, OverflowError):
        culprit(message.task, message.args, dict(message.kwargs), serializer)  # raises, naming the argument
        raise
    headers = message.headers()
    if compression is not None:
        body, headers["compression"] = compress(body, compression)
    if max_size is not None and len(body) > max_size:
        raise EncodeError(
            f"task {message.task!r} ({message.id}): message body is {len(body):,} bytes, over the limit of "
            f"{max_size:,} (max_message_size). Send a reference (an id, a URL) instead of the data, "
            "or enable compression."
        )
    return Envelope(
        exchange=exchange,
        routing_key=routing_key,
        body=body,
        headers=headers,
        content_type=content_type(serializer),
        correlation_id=message.id,
        reply_to=message.reply_to,
        priority=priority,
        mandatory=mandatory,
    )


def from_amqp(
    body: bytes,
    headers: Mapping[str, Any] | None,
    *,
    content_type: str | None,
    content_encoding: str | None,
    correlation_id: str | None = None,
    reply_to: str | None = None,
    max_size: int | None = None,
) -> TaskMessage:
    """Decode a received message; :class:`MessageError` says why it is not a task we can run."""
    headers = dict(headers or {})
    if max_size is not None and len(body) > max_size:
        raise MessageError(
            "oversized", f"body is {len(body):,} bytes, over the limit of {max_size:,} (broker.max_message_size)"
        )
    if "compression" in headers:
        inflated = None if max_size is None else max_size * DECOMPRESSED_SIZE_FACTOR
        body = decompress(body, str(headers["compression"]), inflated)
    for required in ("task", "id"):
        if not headers.get(required) and not (required == "id" and correlation_id):
            raise MessageError("missing-header", f"no {required!r} header: not a Celery protocol v2 task message")
    payload = loads(body, content_type, content_encoding)
    if not (isinstance(payload, list) and len(payload) == 3 and isinstance(payload[0], list)):
        raise MessageError("bad-body", "body must be [args, kwargs, embed]")
    args, kwargs, embed = payload
    if not isinstance(kwargs, dict) or not isinstance(embed, dict | None):
        raise MessageError("bad-body", "body must be [args, kwargs, embed] with kwargs a mapping")
    embed = embed or {}
    try:
        timelimit = headers.get("timelimit") or (None, None)
        return TaskMessage(
            id=str(headers.get("id") or correlation_id),
            task=str(headers["task"]),
            args=tuple(args),
            kwargs=kwargs,
            eta=_datetime(headers.get("eta"), "eta"),
            expires=_datetime(headers.get("expires"), "expires"),
            retries=int(headers.get("retries") or 0),
            root_id=headers.get("root_id"),
            parent_id=headers.get("parent_id"),
            group=headers.get("group"),
            group_index=headers.get("group_index"),
            timelimit=(_seconds(timelimit[0]), _seconds(timelimit[1])),
            ignore_result=bool(headers.get("ignore_result")),
            callbacks=tuple(embed.get("callbacks") or ()),
            errbacks=tuple(embed.get("errbacks") or ()),
            chain=tuple(embed.get("chain") or ()),
            chord=embed.get("chord"),
            reply_to=reply_to,
            origin=str(headers.get("origin") or ""),
            extra_headers={k: v for k, v in headers.items() if k not in _PROTOCOL_HEADERS},
        )
    except (TypeError, ValueError, IndexError, OverflowError) as exc:
        raise MessageError("bad-header", str(exc)) from None


def _datetime(value: Any, name: str) -> datetime | None:
    if value in (None, ""):
        return None
    if isinstance(value, datetime):
        return value
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        raise MessageError("bad-header", f"{name} header {value!r} is not an ISO 8601 date-time") from None
    # Celery sends naive times in its app timezone, UTC unless configured otherwise.
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def retried(message: TaskMessage, **changes: Any) -> TaskMessage:
    """The same task again (same id), with *changes* (eta, retries...)."""
    return replace(message, **changes)


def _seconds(value: Any) -> float | None:
    """A time limit from the header. AMQP clients differ in how floats travel: aio-pika sends a decimal, which
    pika reads back as ``decimal.Decimal``."""
    if isinstance(value, decimal.Decimal):
        return float(value)
    return value  # type: ignore[no-any-return]
