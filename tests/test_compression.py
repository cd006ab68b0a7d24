"""Compressed bodies as workers read them: every marker Celery and we write, and no decompression bombs."""

from __future__ import annotations

import gzip
import zlib

import pytest

from amqptasks.message.errors import MessageError
from amqptasks.message.serialize import compress, decompress

BODY = b'[[2, 3], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]'


@pytest.mark.parametrize(
    ("header", "data"),
    [
        ("application/x-gzip", zlib.compress(BODY)),  # what kombu (Celery) and we write for zlib and gzip
        ("application/x-gzip", gzip.compress(BODY)),  # real gzip under kombu's marker
        ("application/gzip", gzip.compress(BODY)),
        ("gzip", gzip.compress(BODY[:20]) + gzip.compress(BODY[20:])),  # two gzip members, one after the other
        ("zlib", zlib.compress(BODY)),
    ],
)
def test_every_compression_marker_is_read(header: str, data: bytes) -> None:
    assert decompress(data, header) == BODY
    assert decompress(data, header, limit=len(BODY)) == BODY  # a body exactly at the limit is fine


def test_what_we_write_is_read_back() -> None:
    data, header = compress(BODY, "zlib")
    assert decompress(data, header, limit=1024) == BODY


def test_a_decompression_bomb_is_refused_without_inflating_it() -> None:
    # Given ~64 KiB of zlib that would inflate to 64 MiB
    bomb = zlib.compress(b"[" + b" " * (64 * 1024 * 1024) + b"]", 9)
    assert len(bomb) < 100 * 1024

    # When a worker with a 1 MiB limit reads it, Then it is refused as oversized
    with pytest.raises(MessageError) as caught:
        decompress(bomb, "application/x-gzip", limit=1024 * 1024)
    assert caught.value.reason == "oversized"
    assert "inflates (application/x-gzip) to over 1,048,576 bytes" in str(caught.value)


@pytest.mark.parametrize("header", ["zlib", "gzip", "application/x-gzip"])
def test_truncated_or_garbled_data_is_undecodable_not_a_crash(header: str) -> None:
    data = gzip.compress(BODY) if header == "gzip" else zlib.compress(BODY)
    for broken in (data[:-6], b"not compressed at all", b""):
        with pytest.raises(MessageError) as caught:
            decompress(broken, header, limit=1024)
        assert caught.value.reason == "undecodable", broken


def test_an_unknown_compression_is_named() -> None:
    with pytest.raises(MessageError, match="unsupported compression 'rar'"):
        decompress(b"x", "rar")
