"""Body serializers (JSON by default, msgpack optional) and compression. Never pickle."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Callable
from typing import Any, Literal

from amqptasks.message.errors import EncodeError, MessageError

Serializer = Literal["json", "msgpack"]
Compression = Literal["zlib", "gzip"]

CONTENT_TYPES: dict[str, Serializer] = {
    "application/json": "json",
    "application/x-msgpack": "msgpack",
    "application/msgpack": "msgpack",
}
_CONTENT_TYPE_OF: dict[Serializer, str] = {"json": "application/json", "msgpack": "application/x-msgpack"}

# kombu (Celery) marks zlib-compressed bodies "application/x-gzip"; we write that for zlib so a Celery
# worker can read our messages, and accept real gzip too.
_COMPRESSION_HEADER: dict[Compression, str] = {"zlib": "application/x-gzip", "gzip": "application/gzip"}
_DECOMPRESS: dict[str, Callable[[bytes], bytes]] = {
    "application/x-gzip": lambda data: gzip.decompress(data) if data[:2] == b"\x1f\x8b" else zlib.decompress(data),
    "application/gzip": gzip.decompress,
    "zlib": zlib.decompress,
    "gzip": gzip.decompress,
}


def content_type(serializer: Serializer) -> str:
    return _CONTENT_TYPE_OF[serializer]


def _msgpack() -> Any:
    try:
        import msgpack  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise EncodeError("msgpack is not installed: pip install 'amqptasks[msgpack]'") from None
    return msgpack


def dumps(value: Any, serializer: Serializer) -> bytes:
    if serializer == "msgpack":
        return bytes(_msgpack().packb(value, use_bin_type=True))
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def loads(body: bytes, content_type: str | None, content_encoding: str | None) -> Any:
    serializer = CONTENT_TYPES.get((content_type or "").lower())
    if serializer is None:
        raise MessageError("content-type", f"unsupported content type {content_type!r} (amqptasks reads JSON/msgpack)")
    try:
        if serializer == "msgpack":
            return _msgpack().unpackb(body, raw=False)
        return json.loads(body.decode(content_encoding or "utf-8"))
    except (ValueError, UnicodeDecodeError, LookupError) as exc:
        raise MessageError("undecodable", f"body is not valid {serializer}: {exc}") from None


def compress(body: bytes, method: Compression) -> tuple[bytes, str]:
    data = zlib.compress(body) if method == "zlib" else gzip.compress(body)
    return data, _COMPRESSION_HEADER[method]


def decompress(body: bytes, header: str) -> bytes:
    method = _DECOMPRESS.get(header)
    if method is None:
        raise MessageError("compression", f"unsupported compression {header!r}")
    try:
        return method(body)
    except (OSError, zlib.error, EOFError) as exc:
        raise MessageError("undecodable", f"cannot decompress ({header}): {exc}") from None


def check_serializable(task: str, args: tuple[Any, ...], kwargs: dict[str, Any], serializer: Serializer) -> None:
    """Name the first argument that cannot be serialized, before anything is sent."""
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
