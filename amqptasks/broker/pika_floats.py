"""pika reads float and double header values as integers (pika#599, still in pika 1.x): 0.5 arrives as 0.

Celery clients (py-amqp) send floats as doubles, aio-pika as floats; a time limit of 0.5 s would silently become
"no limit". Importing this module (broker/connection.py does, so every pika user here) makes pika decode both
kinds as Python floats; every other kind is left to pika. pika is pinned below 2 (pyproject.toml);
tests/test_worker_limits.py sends a 0.2 s limit through aio-pika (a float).
"""

from __future__ import annotations

import struct
from typing import Any

import pika.data

_pika_decode_value = pika.data.decode_value


def _decode_value(encoded: bytes, offset: int) -> tuple[Any, int]:
    kind = encoded[offset : offset + 1]
    if kind == b"f":
        return struct.unpack_from(">f", encoded, offset + 1)[0], offset + 5
    if kind == b"d":
        return struct.unpack_from(">d", encoded, offset + 1)[0], offset + 9
    decoded: tuple[Any, int] = _pika_decode_value(encoded, offset)
    return decoded


pika.data.decode_value = _decode_value  # tables and arrays call it by its module-level name
