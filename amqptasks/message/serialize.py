"""Body serializers (JSON by default, msgpack optional) and compression. Never pickle."""

from __future__ import annotations

import base64
import json
import uuid
import zlib
from collections.abc import Callable
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any, Literal

from amqptasks.constants import DECOMPRESSED_SIZE_FACTOR
from amqptasks.message.errors import EncodeError, MessageError

Serializer = Literal["json", "msgpack"]
Compression = Literal["zlib", "gzip"]

CONTENT_TYPES: dict[str, Serializer] = {
    "application/json": "json",
    "application/x-msgpack": "msgpack",
    "application/msgpack": "msgpack",
}
_CONTENT_TYPE_OF: dict[Serializer, str] = {"json": "application/json", "msgpack": "application/x-msgpack"}

# kombu (Celery) means zlib by both "zlib" and "gzip" and marks the body "application/x-gzip"; a Celery
# worker cannot read anything else (it acks and drops it), so both names write that. Real gzip is read.
_COMPRESSION_HEADER: dict[Compression, str] = {"zlib": "application/x-gzip"}
# zlib's window bits for each marker: 15 a zlib stream, 31 gzip, 47 either (told apart by the gzip magic).
_GZIP_WBITS = 16 + zlib.MAX_WBITS
_WBITS: dict[str, int] = {
    "application/x-gzip": 32 + zlib.MAX_WBITS,
    "application/gzip": _GZIP_WBITS,
    "zlib": zlib.MAX_WBITS,
    "gzip": _GZIP_WBITS,
}


def content_type(serializer: Serializer) -> str:
    return _CONTENT_TYPE_OF[serializer]


def _msgpack() -> Any:
    try:
        import msgpack  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:
        raise EncodeError("msgpack is not installed: pip install 'amqptasks[msgpack]'") from None
    return msgpack


# kombu's JSON tags for values JSON has no type for: {"__type__": "datetime", "__value__": "2026-..."}.
_ENCODERS: tuple[tuple[type, str, Callable[[Any], Any]], ...] = (
    (datetime, "datetime", datetime.isoformat),  # before date: a datetime is a date too
    (date, "date", date.isoformat),
    (time, "time", time.isoformat),
    (Decimal, "decimal", str),
    (uuid.UUID, "uuid", lambda u: {"hex": u.hex}),
)
_DECODERS: dict[str, Callable[[Any], Any]] = {
    "datetime": datetime.fromisoformat,
    "date": lambda v: datetime.fromisoformat(v).date(),
    "time": time.fromisoformat,
    "decimal": Decimal,
    "uuid": lambda v: uuid.UUID(**v),
    "bytes": lambda v: v.encode("utf-8"),
    "base64": base64.b64decode,
}


def _encode_tagged(value: Any) -> Any:
    for kind, tag, encode in _ENCODERS:
        if isinstance(value, kind):
            return {"__type__": tag, "__value__": encode(value)}
    if isinstance(value, bytes):
        try:
            return {"__type__": "bytes", "__value__": value.decode("utf-8")}
        except UnicodeDecodeError:
            return {"__type__": "base64", "__value__": base64.b64encode(value).decode()}
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _decode_tagged(obj: dict[str, Any]) -> Any:
    if obj.keys() == {"__type__", "__value__"} and obj["__type__"] in _DECODERS:
        return _DECODERS[obj["__type__"]](obj["__value__"])
    return obj


#: kombu's JSON tags, for other JSON documents that travel beside task bodies (result states).
json_default = _encode_tagged
json_object_hook = _decode_tagged

#: One encoder for every call (json.dumps with options builds a new one each time; encoding keeps no state).
_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_encode_tagged)


def dumps(value: Any, serializer: Serializer) -> bytes:
    if serializer == "msgpack":
        return bytes(_msgpack().packb(value, use_bin_type=True))
    return _JSON.encode(value).encode()


def loads(body: bytes, content_type: str | None, content_encoding: str | None) -> Any:
    serializer = CONTENT_TYPES.get((content_type or "").lower())
    if serializer is None:
        raise MessageError("content-type", f"unsupported content type {content_type!r} (amqptasks reads JSON/msgpack)")
    try:
        if serializer == "msgpack":
            return _msgpack().unpackb(body, raw=False)
        return json.loads(body.decode(content_encoding or "utf-8"), object_hook=_decode_tagged)
    except (ValueError, TypeError, UnicodeDecodeError, LookupError) as exc:  # TypeError: msgpack's unhashable keys
        raise MessageError("undecodable", f"body is not valid {serializer}: {exc}") from None
    except RecursionError:  # e.g. 200,000 nested arrays: the decoder gives up at Python's recursion limit
        raise MessageError("undecodable", f"body nests too deeply to decode as {serializer}") from None


def compress(body: bytes, method: Compression) -> tuple[bytes, str]:
    del method  # both names mean zlib data, as in kombu
    return zlib.compress(body), _COMPRESSION_HEADER["zlib"]


def decompress(body: bytes, header: str, limit: int | None = None) -> bytes:
    """The body inflated, as the ``compression`` header says; at most ``limit`` bytes of it, so that a small
    body that inflates to gigabytes (a decompression bomb) is refused before it is in memory."""
    wbits = _WBITS.get(header)
    if wbits is None:
        raise MessageError("compression", f"unsupported compression {header!r}")
    parts: list[bytes] = []
    size, data = 0, body
    try:
        while True:  # a gzip body may hold several members, one after the other
            inflater = zlib.decompressobj(wbits)
            part = inflater.decompress(data, 0 if limit is None else limit - size + 1)
            size += len(part)
            if limit is not None and size > limit:
                raise MessageError(
                    "oversized",
                    (
                        f"body inflates ({header}) to over {limit:,} bytes, the most a compressed body may hold "
                        f"({DECOMPRESSED_SIZE_FACTOR} x broker.max_message_size)"
                    ),
                )
            parts.append(part)
            if not inflater.eof:
                raise MessageError("undecodable", f"cannot decompress ({header}): the data is truncated")
            data = inflater.unused_data
            if not data or wbits == zlib.MAX_WBITS:  # zlib, like zlib.decompress(), ignores what follows
                return b"".join(parts)
    except zlib.error as exc:
        raise MessageError("undecodable", f"cannot decompress ({header}): {exc}") from None


def culprit(task: str, args: tuple[Any, ...], kwargs: dict[str, Any], serializer: Serializer) -> None:
    """After a body failed to serialize: raise EncodeError naming the first argument that cannot be sent."""
    named = [(f"argument {i + 1}", value) for i, value in enumerate(args)] + [
        (f"keyword argument {key!r}", value) for key, value in kwargs.items()
    ]
    for label, value in named:
        try:
            dumps(value, serializer)
        except (TypeError, ValueError, OverflowError) as exc:
            raise EncodeError(
                f"task {task!r}: {label} ({type(value).__name__}) cannot be sent as {serializer}: {exc}. "
                "Pass plain data (str, int, float, bool, None, lists, dicts), e.g. an id instead of an object."
            ) from None
    raise EncodeError(f"task {task!r}: the message cannot be sent as {serializer}")
