"""Our basic.publish encoder against pika's own marshalling: byte for byte, also when header values repeat."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from pika import frame, spec

from amqptasks.broker.rabbitmq.frames import encode_publish
from amqptasks.message.envelope import Envelope

FRAME_MAX = 131_072


def pika_frames(channel: int, envelope: Envelope) -> bytes:
    props = spec.BasicProperties(**envelope.properties())
    method = spec.Basic.Publish(
        exchange=envelope.exchange, routing_key=envelope.routing_key, mandatory=envelope.mandatory
    )
    parts = [frame.Method(channel, method).marshal(), frame.Header(channel, len(envelope.body), props).marshal()]
    step = FRAME_MAX - 8
    parts += [frame.Body(channel, envelope.body[i : i + step]).marshal() for i in range(0, len(envelope.body), step)]
    return b"".join(parts)


HEADERS: list[dict[str, Any]] = [
    {"task": "a.b", "retries": 0, "flag": True, "none": None},
    # the same keys again with values equal to the previous ones but of another type
    {"task": "a.b", "retries": False, "flag": 1, "none": None},
    {"task": "a.b", "retries": 2**40, "flag": "1", "none": "x"},  # (pika cannot encode floats; we send a double)
    {"timelimit": [None, 3], "nested": {"k": [1, "two", None]}, "d": Decimal("1.25"), "b": b"raw"},
    {"timelimit": [None, True], "nested": {"k": [True, "two", None]}},
    {"é": "ünïcode", "retries": -5},
]


@pytest.mark.parametrize("headers", HEADERS)
def test_encoded_frames_equal_pikas_even_when_header_values_repeat_with_other_types(headers: dict[str, Any]) -> None:
    envelope = Envelope(exchange="ex", routing_key="rk", body=b"[[1],{},{}]", headers=headers, correlation_id="id-1")
    assert encode_publish(3, envelope, FRAME_MAX) == pika_frames(3, envelope)


def test_every_property_and_destination_encodes_as_pika_does() -> None:
    envelopes = [
        Envelope(exchange="", routing_key="q", body=b"x", priority=7, reply_to="r", expiration=1500, mandatory=False),
        Envelope(exchange="topic", routing_key="a.b.c", body=b"y", content_type="application/x-msgpack"),
        Envelope(exchange="", routing_key="q", body=b"", headers={}),
        Envelope(exchange="", routing_key="q", body="é".encode() * 100_000, headers={"n": 1}),  # several body frames
    ]
    for envelope in envelopes * 2:  # twice: the second time from the caches
        assert encode_publish(1, envelope, FRAME_MAX) == pika_frames(1, envelope)
