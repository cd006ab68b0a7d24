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


@scenario
def multiple_acks_and_nacks_settle_everything_up_to_the_tag(d: Driver) -> Any:
    d.queue("q")
    for body in "12345":
        d.publish("", "q", body)
    tags = []
    for _ in range(5):
        got = d.get("q")
        assert got is not None
        tags.append(got.tag)
    d.ack(tags[1], multiple=True)  # 1 and 2
    d.nack(tags[3], requeue=True, multiple=True)  # 3 and 4 back
    d.reopen()  # 5 back, too
    return d.drain("q")


@scenario
def auto_ack_gets_and_purge(d: Driver) -> Any:
    d.queue("q")
    for body in "123":
        d.publish("", "q", body)
    first = d.get_auto_ack("q")
    held = d.get("q")
    assert held is not None
    purged = d.purge("q")  # only the ready one: the held delivery stays held
    d.reopen()
    return first, purged, d.drain("q")


@scenario
def deleting_an_exchange_takes_its_bindings(d: Driver) -> Any:
    d.exchange("x", "fanout")
    d.exchange("up", "fanout")
    d.queue("q")
    d.bind("q", "x")
    d.bind_exchange("x", "up")
    d.delete_exchange("x")
    return d.publish("up", "", "m", mandatory=True), d.attempt(lambda: d.publish("x", "", "m")), d.count("q")


@scenario
def deleting_a_queue_reports_what_it_held(d: Driver) -> Any:
    d.queue("q")
    d.queue("empty")
    d.publish("", "q", "1")
    d.publish("", "q", "2")
    refused = d.attempt(lambda: d.delete_queue("q", if_empty=True))
    return refused, d.delete_queue("q"), d.delete_queue("empty", if_empty=True), d.attempt(lambda: d.count("q"))
