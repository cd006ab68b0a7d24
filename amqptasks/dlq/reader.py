"""Reading a dead-letter queue without consuming it, and the failure records (``amqptasks.failures``).

Dead letters are read with ``basic.get`` without acknowledging, on a channel of their own that is then
closed: the broker returns every one of them to the queue, in order. While the read lasts they are unacked,
and afterwards they carry ``redelivered=true``.
"""

from __future__ import annotations

import hashlib
import json
import reprlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pika
import pika.exceptions

from amqptasks.broker.connection import connect as connect_blocking
from amqptasks.config.model import Config
from amqptasks.constants import (
    DEFAULT_MAX_MESSAGE_SIZE,
    DELAY_TARGET_HEADER,
    DLQ_SUFFIX,
    FAILURES_QUEUE,
    dlq_name,
    is_delay_name,
)
from amqptasks.errors import BrokerError
from amqptasks.message.errors import MessageError
from amqptasks.message.protocol import DEATH_HEADERS
from amqptasks.tasks.dispatch import decode


@dataclass(frozen=True)
class DeadLetter:
    """One message of a dead-letter queue (pure data)."""

    body: bytes
    properties: pika.BasicProperties
    source: str
    delivery_tag: int = 0
    decoded: Any = None
    decode_error: str | None = None
    record: Mapping[str, Any] | None = field(default=None, compare=False)

    @property
    def headers(self) -> dict[str, Any]:
        return dict(self.properties.headers or {})

    @property
    def id(self) -> str:
        return str(self.headers.get("id") or self.properties.correlation_id or self.properties.message_id or "")

    @property
    def key(self) -> str:
        """What its failure record is filed under (see :func:`record_key`)."""
        return record_key(self.headers, self.properties.correlation_id, self.body)

    @property
    def task(self) -> str:
        return str(self.headers.get("task") or "")

    @property
    def death(self) -> Mapping[str, Any]:
        """The x-death entry of the source queue (else the newest one)."""
        deaths = [d for d in self.headers.get("x-death") or [] if isinstance(d, Mapping)]
        for entry in deaths:
            if entry.get("queue") == self.source:
                return entry
        return deaths[0] if deaths else {}

    def _origin(self) -> tuple[str, str]:
        # A retried message reaches its queue from a delay tier: x-death names the tier, and the exchange it
        # was first sent to travels in a header (its routing key is the original one).
        keys = self.death.get("routing-keys") or []
        key = str(keys[0]) if keys else self.source
        kind, _, name = str(self.headers.get(DELAY_TARGET_HEADER, "")).partition(":")
        if kind == "queue":
            return "", name
        exchange = name if kind == "exchange" else str(self.death.get("exchange", ""))
        return exchange, (key if exchange else self.source if is_delay_name(key) else key)

    @property
    def exchange(self) -> str:
        return self._origin()[0]

    @property
    def routing_key(self) -> str:
        return self._origin()[1]

    @property
    def reason(self) -> str:
        return str(self.death.get("reason", ""))

    @property
    def count(self) -> int:
        return int(self.death.get("count", 0) or 0)

    @property
    def first_death(self) -> datetime | None:
        value = self.death.get("time")
        return value if isinstance(value, datetime) else None

    @property
    def args_excerpt(self) -> str:
        if self.decoded is None:
            return self.decode_error or ""
        return str(self.headers.get("argsrepr") or _REPR.repr(tuple(self.decoded.args)))

    @property
    def last_error(self) -> str:
        if not self.record:
            return ""
        kind, text = self.record.get("exc_type"), self.record.get("exc_message")
        return f"{kind}: {text}" if kind else str(self.record.get("reason") or "")

    def fresh_headers(self) -> dict[str, Any]:
        """The headers of a replayed copy: no death headers (cycle detection would drop it) and none of the delay
        tiers' routing headers (as for a retry); the others, ``retries`` included, unchanged."""
        return {
            k: v
            for k, v in self.headers.items()
            if k not in DEATH_HEADERS and not k.startswith(("x-last-death-", "amqptasks."))
        }


def record_key(headers: Mapping[str, Any] | None, correlation_id: str | None, body: bytes) -> str:
    """The task id a failure record is filed under; a message with no id at all (hostile input) is known by a
    digest of its body, so that its dead letter still finds the reason it was rejected."""
    value = headers.get("id") if isinstance(headers, Mapping) else None
    if value or correlation_id:
        return str(value or correlation_id)
    return "body:" + hashlib.sha1(body, usedforsecurity=False).hexdigest()[:20]


#: Arguments are shown a few levels and items deep: a dead letter may hold anything, nested to any depth.
_REPR = reprlib.Repr()  # keyword arguments only from Python 3.12
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 4, 60, 60


def queue_names(queue: str) -> tuple[str, str]:
    """(source queue, dead-letter queue) for QUEUE given as either."""
    if queue.endswith(DLQ_SUFFIX):
        return queue[: -len(DLQ_SUFFIX)], queue
    return queue, dlq_name(queue)


def dead_letter(
    source: str, tag: int, props: pika.BasicProperties, body: bytes, max_size: int = DEFAULT_MAX_MESSAGE_SIZE
) -> DeadLetter:
    """A dead letter, decoded as a worker would (``max_size``: broker.max_message_size; an oversized body or a
    decompression bomb is shown as not a task, not inflated)."""
    try:
        decoded = decode(body, props.headers, props.content_type, props.content_encoding, props.correlation_id,
                         max_size=max_size)  # fmt: skip
        return DeadLetter(body, props, source, tag, decoded)
    except MessageError as exc:
        return DeadLetter(body, props, source, tag, None, f"<not a task: {exc}>")
    except Exception as exc:  # whatever a dead-letter queue holds, the tools show it rather than crash
        return DeadLetter(body, props, source, tag, None, f"<not a task: cannot decode it: {exc!r}>")


@contextmanager
def connect(config: Config, purpose: str) -> Iterator[pika.BlockingConnection]:
    connection = connect_blocking(config.broker, f"amqptasks dlq {purpose}")
    try:
        yield connection
    finally:
        if connection.is_open:
            connection.close()


def depth(connection: pika.BlockingConnection, queue: str) -> int:
    """Messages ready in *queue*; a missing queue is a BrokerError saying so."""
    channel = connection.channel()
    try:
        return int(channel.queue_declare(queue, passive=True).method.message_count)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            raise BrokerError(
                f"queue {queue!r} does not exist on the broker (is it declared with 'dead_letter: auto'? "
                "pass the source queue or the dead-letter queue's name)"
            ) from None
        raise BrokerError(f"cannot read queue {queue!r}: {exc.reply_text}") from None
    finally:
        if channel.is_open:
            channel.close()


def peek(
    connection: pika.BlockingConnection,
    queue: str,
    limit: int | None = None,
    max_size: int = DEFAULT_MAX_MESSAGE_SIZE,
) -> list[DeadLetter]:
    """Up to *limit* dead letters of *queue* (source or DLQ name), oldest first, left in the queue."""
    source, dlq = queue_names(queue)
    available = depth(connection, dlq)
    wanted = available if limit is None else min(limit, available)
    channel = connection.channel()
    found: list[DeadLetter] = []
    try:
        while len(found) < wanted:
            method, props, body = channel.basic_get(dlq, auto_ack=False)
            if method is None:
                break
            found.append(dead_letter(source, method.delivery_tag, props, body, max_size))
    finally:
        if channel.is_open:
            channel.close()  # every message goes back, unacked, in order
    return found


def failure_records(connection: pika.BlockingConnection, task_ids: set[str] | None = None) -> dict[str, dict[str, Any]]:
    """The newest failure record of each task id (all of them, or only *task_ids*), left in their queue."""
    try:
        available = depth(connection, FAILURES_QUEUE)
    except BrokerError:
        return {}  # no worker wrote a record yet
    channel = connection.channel()
    records: dict[str, dict[str, Any]] = {}
    try:
        for _ in range(available):
            method, _, body = channel.basic_get(FAILURES_QUEUE, auto_ack=False)
            if method is None:
                break
            try:
                record = json.loads(body)
            except ValueError:
                continue
            task_id = str(record.get("task_id")) if isinstance(record, dict) else None
            if task_id and (task_ids is None or task_id in task_ids):
                records[task_id] = record  # oldest first: a later record of the same task replaces it
    finally:
        if channel.is_open:
            channel.close()  # every record goes back, unacked, in order
    return records


def with_records(connection: pika.BlockingConnection, letters: list[DeadLetter]) -> list[DeadLetter]:
    records = failure_records(connection, {d.key for d in letters})
    return [DeadLetter(d.body, d.properties, d.source, d.delivery_tag, d.decoded, d.decode_error, records.get(d.key))
            for d in letters]  # fmt: skip
