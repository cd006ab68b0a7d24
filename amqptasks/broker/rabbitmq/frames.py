"""``basic.publish`` frames for an Envelope, encoded faster than pika's generic marshalling.

pika builds a Method, a Header and a Body object per message and marshals each field with its own
``struct`` call, which costs about as much as everything else on the bulk publish path. Task messages
are encoded here directly, with the same type tags as pika (``S`` long string, ``I``/``l`` integers,
``t`` booleans, ``A`` arrays, ``F`` tables, ``V`` void), and pika's encoder handles anything rarer.
Layout: AMQP 0-9-1 section 4.2.
"""

from __future__ import annotations

import struct
from functools import lru_cache
from typing import Any

from pika import data as pika_data

from amqptasks.message.envelope import Envelope

_FRAME_METHOD, _FRAME_HEADER, _FRAME_BODY, _FRAME_END = 1, 2, 3, b"\xce"
_BASIC_CLASS, _PUBLISH_METHOD = 60, 40
# basic properties flag bits, in the order their values follow (section 4.2.6.1 / spec.BasicProperties)
_CONTENT_TYPE, _CONTENT_ENCODING, _HEADERS, _DELIVERY_MODE = 1 << 15, 1 << 14, 1 << 13, 1 << 12
_PRIORITY, _CORRELATION_ID, _REPLY_TO, _EXPIRATION = 1 << 11, 1 << 10, 1 << 9, 1 << 8


def _shortstr(value: str) -> bytes:
    raw = value.encode()
    if len(raw) > 255:
        raise ValueError(f"{value[:40]!r}... is longer than 255 bytes (AMQP short string)")
    return bytes((len(raw),)) + raw


_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")
_F64 = struct.Struct(">d")


@lru_cache(maxsize=1024)
def _key(key: str) -> bytes:
    return _shortstr(key)


def _value(value: Any) -> bytes:
    """One field value with its type tag, as pika encodes it (so that every client reads it the same way)."""
    if isinstance(value, str):
        raw = value.encode()
        return b"S" + _U32.pack(len(raw)) + raw
    if isinstance(value, bool):
        return b"t\x01" if value else b"t\x00"
    if isinstance(value, int):
        return b"I" + _I32.pack(value) if -(2**31) <= value < 2**31 else b"l" + _I64.pack(value)
    if isinstance(value, float):
        return b"d" + _F64.pack(value)
    if value is None:
        return b"V"
    if isinstance(value, list | tuple):
        items = b"".join(_value(v) for v in value)
        return b"A" + _U32.pack(len(items)) + items
    if isinstance(value, dict):
        return b"F" + encode_table(value)
    pieces: list[bytes] = []
    pika_data.encode_value(pieces, value)  # bytes, Decimal, datetime...: pika's encoding, raising if unsupported
    return b"".join(pieces)


#: Scalar types whose encoded header field is remembered (see encode_table).
_SCALARS = frozenset({str, int, bool, type(None)})
_PAIRS_MAX = 1024
#: key -> (type, value, encoded field) of the last scalar value seen under that key. Task headers mostly repeat
#: from one message to the next (task name, origin, retries, argsrepr...): those are encoded once. The type is
#: part of the match because ``True == 1``, yet the two are encoded differently (``t`` and ``I``).
_PAIRS: dict[str, tuple[type, Any, bytes]] = {}


def encode_table(table: Any) -> bytes:
    parts = []
    pairs = _PAIRS
    for k, v in table.items():
        kind = type(v)
        last = pairs.get(k)
        if last is not None and last[0] is kind and last[1] == v:
            parts.append(last[2])
            continue
        field = _key(k) + _value(v)
        if kind in _SCALARS and (last is not None or len(pairs) < _PAIRS_MAX):
            pairs[k] = (kind, v, field)
        parts.append(field)
    body = b"".join(parts)
    return _U32.pack(len(body)) + body


_FRAME_HEAD = struct.Struct(">BHI")


def _frame(kind: int, channel: int, payload: bytes) -> bytes:
    return _FRAME_HEAD.pack(kind, channel, len(payload)) + payload + _FRAME_END


@lru_cache(maxsize=1024)
def _method_frame(channel: int, exchange: str, routing_key: str, mandatory: bool) -> bytes:
    """The basic.publish method frame: the same bytes for every message to one destination."""
    method = struct.pack(">HHH", _BASIC_CLASS, _PUBLISH_METHOD, 0)  # reserved-1 (ticket)
    method += _shortstr(exchange) + _shortstr(routing_key) + bytes((1 if mandatory else 0,))
    return _frame(_FRAME_METHOD, channel, method)


@lru_cache(maxsize=64)
def _const_shortstr(value: str) -> bytes:
    return _shortstr(value)


def _properties(envelope: Envelope) -> bytes:
    flags = 0
    parts: list[bytes] = []
    if envelope.content_type is not None:
        flags |= _CONTENT_TYPE
        parts.append(_const_shortstr(envelope.content_type))
    if envelope.content_encoding is not None:
        flags |= _CONTENT_ENCODING
        parts.append(_const_shortstr(envelope.content_encoding))
    if envelope.headers:
        flags |= _HEADERS
        parts.append(encode_table(envelope.headers))
    if envelope.delivery_mode is not None:
        flags |= _DELIVERY_MODE
        parts.append(bytes((envelope.delivery_mode,)))
    if envelope.priority is not None:
        flags |= _PRIORITY
        parts.append(bytes((envelope.priority,)))
    if envelope.correlation_id is not None:
        flags |= _CORRELATION_ID
        parts.append(_shortstr(envelope.correlation_id))
    if envelope.reply_to is not None:
        flags |= _REPLY_TO
        parts.append(_shortstr(envelope.reply_to))
    if envelope.expiration is not None:
        flags |= _EXPIRATION
        parts.append(_shortstr(str(envelope.expiration)))
    return struct.pack(">H", flags) + b"".join(parts)


_CONTENT_HEAD = struct.Struct(">HHQ")


def encode_publish(channel: int, envelope: Envelope, frame_max: int) -> bytes:
    """The method, content header and body frames of one ``basic.publish``, ready for the socket."""
    body = envelope.body
    header = _CONTENT_HEAD.pack(_BASIC_CLASS, 0, len(body)) + _properties(envelope)
    frames = [
        _method_frame(channel, envelope.exchange, envelope.routing_key, envelope.mandatory),
        _frame(_FRAME_HEADER, channel, header),
    ]
    step = frame_max - 8  # frame overhead: type, channel, size, end
    if 0 < len(body) <= step:
        frames.append(_frame(_FRAME_BODY, channel, body))
    else:  # none for an empty body
        frames.extend(_frame(_FRAME_BODY, channel, body[i : i + step]) for i in range(0, len(body), step))
    return b"".join(frames)
