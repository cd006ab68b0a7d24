"""Consumers: acks, requeues and redelivered flags, channel closes, quorum delivery limits."""

from __future__ import annotations

from typing import Any

from tests.differential.driver import Driver
from tests.differential.table import scenario

_QUORUM = {"x-queue-type": "quorum"}


@scenario
def nack_requeue_puts_messages_back_in_their_place(d: Driver) -> Any:
    d.queue("q")
    for body in ("1", "2", "3"):
        d.publish("", "q", body)
    first, second = d.get("q"), d.get("q")
    assert first is not None and second is not None
    d.nack(second.tag, requeue=True)
    d.reject(first.tag, requeue=True)
    return d.drain("q")


@scenario
def closing_the_channel_requeues_unacked_deliveries(d: Driver) -> Any:
    d.queue("q")
    for body in ("1", "2", "3"):
        d.publish("", "q", body)
    first, second = d.get("q"), d.get("q")
    assert first is not None and second is not None
    d.ack(first.tag)
    d.reopen()
    return d.drain("q")


@scenario
def acking_an_unknown_tag_closes_the_channel_and_requeues(d: Driver) -> Any:
    d.queue("q")
    d.publish("", "q", "1")
    got = d.get("q")
    assert got is not None
    refused = d.attempt(lambda: d.ack(got.tag + 100))
    return refused, d.drain("q")


@scenario
def get_reports_how_many_are_left(d: Driver) -> Any:
    d.queue("q")
    for body in ("1", "2", "3"):
        d.publish("", "q", body)
    counts = [d.count("q")]
    got = d.get("q")
    assert got is not None
    counts.append(d.count("q"))
    d.ack(got.tag)
    return counts, d.count("q")


@scenario
def quorum_queue_dead_letters_over_its_delivery_limit(d: Driver) -> Any:
    d.exchange("dlx", "direct")
    d.queue("dlq")
    d.bind("dlq", "dlx", "q")
    d.queue(
        "q",
        arguments={**_QUORUM, "x-delivery-limit": 2, "x-dead-letter-exchange": "dlx", "x-dead-letter-routing-key": "q"},
    )
    d.publish("", "q", "poison")
    deliveries = []
    for _ in range(3):  # the first delivery and the two the limit allows
        d.arrived("q")
        got = d.get("q")
        assert got is not None
        deliveries.append(got.seen())
        d.nack(got.tag, requeue=True)
    d.arrived("dlq")
    return deliveries, d.count("q"), d.drain("dlq")


@scenario
def quorum_queue_serves_returned_messages_first(d: Driver) -> Any:
    d.queue("q", arguments=_QUORUM)
    for body in ("1", "2", "3"):
        d.publish("", "q", body)
    first, second = d.get("q"), d.get("q")
    assert first is not None and second is not None
    d.nack(second.tag, requeue=True)
    d.nack(first.tag, requeue=True)
    d.arrived("q", 3)
    return d.drain("q")


@scenario
def quorum_reject_without_requeue_dead_letters(d: Driver) -> Any:
    d.exchange("dlx", "fanout")
    d.queue("dlq")
    d.bind("dlq", "dlx")
    d.queue("q", arguments={**_QUORUM, "x-dead-letter-exchange": "dlx"})
    d.publish("", "q", "m", headers={"k": "v"})
    got = d.get("q")
    assert got is not None
    d.reject(got.tag, requeue=False)
    d.arrived("dlq")
    return got.seen(), d.drain("dlq")


@scenario
def quorum_queue_with_a_delivery_limit_serves_returned_messages_first(d: Driver) -> Any:
    d.queue("q", arguments={**_QUORUM, "x-delivery-limit": 5})
    for body in ("1", "2", "3"):
        d.publish("", "q", body)
    first, second = d.get("q"), d.get("q")
    assert first is not None and second is not None
    d.nack(second.tag, requeue=True)
    d.nack(first.tag, requeue=True)
    d.arrived("q", 3)
    return d.drain("q")
