"""Which bindings an exchange's type matches for a message (pure): direct, fanout, topic, headers."""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

__all__ = ["EXCHANGE_TYPES", "matches"]

EXCHANGE_TYPES = frozenset({"direct", "fanout", "topic", "headers"})


def matches(kind: str, binding_key: str, binding_args: Mapping[str, Any], routing_key: str,
            headers: Mapping[str, Any] | None) -> bool:  # fmt: skip
    """Whether a binding of an exchange of type *kind* takes a message with *routing_key* and *headers*."""
    if kind == "fanout":
        return True
    if kind == "direct":
        return binding_key == routing_key
    if kind == "topic":
        return topic_matches(binding_key, routing_key)
    if kind == "headers":
        return headers_match(binding_args, headers or {})
    return False


def topic_matches(pattern: str, routing_key: str) -> bool:
    """``*`` is exactly one word, ``#`` zero or more; words are separated by dots (``""`` has no words, ``a..b``
    three, the middle one empty)."""
    return _topic(_words(pattern), _words(routing_key))


def _words(key: str) -> tuple[str, ...]:
    return tuple(key.split(".")) if key else ()


@lru_cache(maxsize=4096)
def _topic(pattern: tuple[str, ...], words: tuple[str, ...]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_topic(rest, words[i:]) for i in range(len(words) + 1))
    if not words:
        return False
    return (head == "*" or head == words[0]) and _topic(rest, words[1:])


def headers_match(binding_args: Mapping[str, Any], headers: Mapping[str, Any]) -> bool:
    """RabbitMQ's headers exchange: ``x-match`` all (the default) or any; ``all-with-x``/``any-with-x`` also
    compare x- headers. A binding argument whose value is void (None) matches the header's presence alone."""
    mode = str(binding_args.get("x-match", "all"))
    with_x = mode.endswith("-with-x")
    wanted = {k: v for k, v in binding_args.items() if k != "x-match" and (with_x or not k.startswith("x-"))}

    def one(key: str, value: Any) -> bool:
        return key in headers and (value is None or _same(headers[key], value))

    if mode.startswith("any"):
        return any(one(k, v) for k, v in wanted.items())
    return all(one(k, v) for k, v in wanted.items())


def _same(a: Any, b: Any) -> bool:
    # Erlang's ==: 1 == 1.0, but a string never equals a number (nor True equals 1: different terms).
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, bytes):
        a = a.decode(errors="replace")
    if isinstance(b, bytes):
        b = b.decode(errors="replace")
    return bool(a == b)
