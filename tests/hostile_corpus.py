"""A corpus of hostile messages: what a broken or malicious client can put in a task queue.

Each entry says what the worker must answer: the specific reason it dead-letters the message with, or ``None``
for a message that is odd but a valid task (it must run). Bodies are built once, lazily (the 12 MiB one and the
200,000-deep one are big).
"""

from __future__ import annotations

import json
import pickle
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: The task the good messages (and the valid odd ones) call: records its argument.
GOOD_TASK = "corpus.good"
#: A task nothing may ever run: the pickle canary's payload would run it if a worker unpickled it.
CANARY_TASK = "corpus.canary"


@dataclass(frozen=True)
class Hostile:
    name: str
    #: The reason the worker gives (the failure record's reason starts with it); None: it is a valid task.
    reason: str | None
    body: Callable[[], bytes]
    headers: dict[str, Any] = field(default_factory=dict)
    content_type: str = "application/json"
    content_encoding: str | None = "utf-8"
    #: False: the message carries no id at all (neither header nor correlation id).
    with_id: bool = True


def _good(arg: Any = "odd") -> Callable[[], bytes]:
    return lambda: json.dumps([[arg], {}, {}]).encode()


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


class _Canary:
    """Unpickling this runs os.system: a worker that unpickles message bodies would create the canary file."""

    def __reduce__(self) -> tuple[Any, ...]:
        import os

        return (os.system, ("touch /tmp/amqptasks-pickle-canary-was-unpickled",))


CANARY_FILE = "/tmp/amqptasks-pickle-canary-was-unpickled"


def corpus() -> list[Hostile]:
    """One of each kind; ``reason`` is what the failure record's reason starts with."""
    # fmt: off
    return [
        Hostile("bad-json", "undecodable", lambda: b'[[1], {"oops"'),
        Hostile("non-utf8", "undecodable", lambda: b"[[\xff\xfe], {}, {}]"),
        Hostile("empty-body", "undecodable", lambda: b""),
        Hostile("deep-json", "undecodable: body nests too deeply", lambda: _nested(200_000)),
        Hostile("pickle-canary", "content-type", lambda: pickle.dumps(_Canary()),
                content_type="application/x-python-serialize", content_encoding="binary"),
        Hostile("unknown-task", "unknown-task", _good(), headers={"task": "corpus.nope"}),
        Hostile("task-header-a-number", "unknown-task", _good(), headers={"task": 12345}),
        Hostile("wrong-arity", "bad-arguments", lambda: json.dumps([[1, 2, 3], {}, {}]).encode()),
        Hostile("kwargs-a-list", "bad-body", lambda: json.dumps([[1], [], {}]).encode()),
        Hostile("celery-v1-body", "missing-header",
                lambda: json.dumps({"task": GOOD_TASK, "id": "v1", "args": [1], "kwargs": {}}).encode(),
                headers={"task": None}),
        Hostile("no-id-at-all", "missing-header", _good(), headers={"id": None}, with_id=False),
        Hostile("garbage-no-id", "missing-header", lambda: b"\x00\x01garbage", headers={"id": None}, with_id=False),
        Hostile("retries-not-a-number", "bad-header", _good(), headers={"retries": "many"}),
        Hostile("retries-infinite", "bad-header", _good(), headers={"retries": "inf"}),
        Hostile("eta-not-a-date", "bad-header", _good(), headers={"eta": "tomorrow"}),
        Hostile("eta-9999", "bad-header: eta out of range", _good(), headers={"eta": "9999-12-31T23:59:59"}),
        Hostile("eta-9999-negative-offset", "bad-header: eta out of range", _good(),
                headers={"eta": "9999-12-31T23:59:59-05:00"}),
        Hostile("unknown-compression", "compression", _good(), headers={"compression": "rar"}),
        Hostile("gzip-bomb", "oversized: body inflates",
                lambda: zlib.compress(b"[[1], {}, {}" + b" " * (80 * 1024 * 1024) + b"]", 9),
                headers={"compression": "application/x-gzip"}),
        Hostile("truncated-gzip", "undecodable", lambda: zlib.compress(_good()())[:-6],
                headers={"compression": "application/x-gzip"}),
        # Over amqptasks' own limit (4 MiB), under every broker's (RabbitMQ 4.0 refuses publishes over 16 MiB)
        Hostile("body-12MiB", "oversized", lambda: b'[["' + b"x" * (12 * 1024 * 1024) + b'"], {}, {}]'),
        Hostile("text-plain", "content-type", _good(), content_type="text/plain"),
        # Odd but valid: these run.
        Hostile("header-table-10000-keys", None, _good("wide"), headers={f"k{i}": i for i in range(10_000)}),
        # RabbitMQ closes the connection (541) of a client that sends a NaN double: only text NaN can arrive.
        Hostile("nan-time-limits", None, _good("nan"), headers={"timelimit": ["NaN", "nan"]}),
        Hostile("moderately-nested-args", None, lambda: json.dumps([[[[[[["deep"]]]]]], {}, {}]).encode()),
    ]
    # fmt: on
