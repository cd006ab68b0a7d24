"""Length limits with each overflow mode, and priorities."""

from __future__ import annotations

from typing import Any

from tests.differential.driver import Driver
from tests.differential.table import scenario


def _dlx(d: Driver) -> None:
    d.exchange("dlx", "fanout")
    d.queue("dlq")
    d.bind("dlq", "dlx")


@scenario
def max_length_drop_head_dead_letters_the_oldest(d: Driver) -> Any:
    _dlx(d)
    d.queue("q", arguments={"x-max-length": 2, "x-dead-letter-exchange": "dlx"})
    sent = [d.publish("", "q", str(i)) for i in range(4)]
    d.arrived("dlq", 2)
    return sent, d.drain("dlq"), d.bodies("q")


@scenario
def max_length_bytes_drop_head(d: Driver) -> Any:
    _dlx(d)
    d.queue("q", arguments={"x-max-length-bytes": 10, "x-dead-letter-exchange": "dlx"})
    sent = [d.publish("", "q", body) for body in ("aaaa", "bbbb", "cccc", "dddddddddd", "e")]
    d.arrived("dlq", 4)
    return sent, d.bodies("dlq"), d.bodies("q")


@scenario
def max_length_zero_dead_letters_everything(d: Driver) -> Any:
    _dlx(d)
    d.queue("q", arguments={"x-max-length": 0, "x-dead-letter-exchange": "dlx"})
    sent = d.publish("", "q", "1")
    d.arrived("dlq")
    return sent, d.count("q"), d.bodies("dlq")


@scenario
def reject_publish_nacks_the_newcomer(d: Driver) -> Any:
    _dlx(d)
    d.queue("q", arguments={"x-max-length": 2, "x-overflow": "reject-publish", "x-dead-letter-exchange": "dlx"})
    sent = [d.publish("", "q", str(i)) for i in range(4)]
    return sent, d.bodies("q"), d.bodies("dlq")


@scenario
def reject_publish_dlx_nacks_and_dead_letters(d: Driver) -> Any:
    _dlx(d)
    d.queue("q", arguments={"x-max-length": 1, "x-overflow": "reject-publish-dlx", "x-dead-letter-exchange": "dlx"})
    sent = [d.publish("", "q", str(i)) for i in range(3)]
    d.arrived("dlq", 2)
    return sent, d.bodies("q"), d.drain("dlq")


@scenario
def reject_publish_frees_room_once_consumed(d: Driver) -> Any:
    d.queue("q", arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    first = [d.publish("", "q", "1"), d.publish("", "q", "2")]
    got = d.get("q")
    assert got is not None
    # Unacknowledged messages do not count against the limit.
    second = d.publish("", "q", "3")
    d.ack(got.tag)
    return first, second, d.bodies("q")


@scenario
def reject_publish_on_one_queue_nacks_but_others_still_get_it(d: Driver) -> Any:
    d.exchange("x", "fanout")
    d.queue("full", arguments={"x-max-length": 0, "x-overflow": "reject-publish"})
    d.queue("open")
    d.bind("full", "x")
    d.bind("open", "x")
    return d.publish("x", "", "m"), d.bodies("open"), d.count("full")


@scenario
def priorities_highest_first_then_fifo(d: Driver) -> Any:
    d.queue("q", arguments={"x-max-priority": 5})
    for body, priority in [("p1-a", 1), ("p0-a", None), ("p5-a", 5), ("p1-b", 1), ("p5-b", 5), ("p0-b", 0)]:
        d.publish("", "q", body, priority=priority)
    return d.drain("q")


@scenario
def priority_above_the_maximum_counts_as_the_maximum(d: Driver) -> Any:
    d.queue("q", arguments={"x-max-priority": 3})
    for body, priority in [("p3", 3), ("p9", 9), ("p2", 2), ("p200", 200)]:
        d.publish("", "q", body, priority=priority)
    return d.drain("q")


@scenario
def priority_is_ignored_without_max_priority(d: Driver) -> Any:
    d.queue("q")
    for body, priority in [("low", 1), ("high", 9), ("none", None)]:
        d.publish("", "q", body, priority=priority)
    return d.drain("q")


@scenario
def requeued_message_keeps_its_priority_place(d: Driver) -> Any:
    d.queue("q", arguments={"x-max-priority": 2})
    for body, priority in [("low", 0), ("high", 2)]:
        d.publish("", "q", body, priority=priority)
    got = d.get("q")
    assert got is not None
    d.publish("", "q", "high-2", priority=2)
    d.nack(got.tag, requeue=True)
    return d.drain("q")


@scenario
def drop_head_on_a_priority_queue(d: Driver) -> Any:
    _dlx(d)
    d.queue("q", arguments={"x-max-priority": 5, "x-max-length": 2, "x-dead-letter-exchange": "dlx"})
    for body, priority in [("p0", 0), ("p5", 5), ("p1", 1), ("p5-b", 5)]:
        d.publish("", "q", body, priority=priority)
    d.arrived("dlq", 2)
    return d.bodies("dlq"), d.bodies("q")


@scenario
def a_dead_letter_into_a_full_reject_publish_queue_is_dropped(d: Driver) -> Any:
    d.exchange("dlx", "fanout")
    d.queue("full", arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    d.queue("open")
    d.bind("full", "dlx")
    d.bind("open", "dlx")
    d.publish("", "full", "already-there")
    d.queue("q", arguments={"x-dead-letter-exchange": "dlx"})
    d.publish("", "q", "dead")
    got = d.get("q")
    assert got is not None
    d.reject(got.tag, requeue=False)
    d.arrived("open")
    return d.bodies("full"), d.bodies("open")


@scenario
def a_dead_letter_keeps_its_priority(d: Driver) -> Any:
    d.exchange("dlx", "fanout")
    d.queue("dlq", arguments={"x-max-priority": 5})
    d.bind("dlq", "dlx")
    d.queue("q", arguments={"x-dead-letter-exchange": "dlx"})
    for body, priority in [("low", 1), ("high", 5), ("mid", 3)]:
        d.publish("", "q", body, priority=priority)
    for _ in range(3):
        got = d.get("q")
        assert got is not None
        d.reject(got.tag, requeue=False)
    d.arrived("dlq", 3)
    return d.bodies("dlq")


@scenario
def a_full_queue_nacks_a_mandatory_message_and_reject_publish_dlx_without_dlx_drops_it(d: Driver) -> Any:
    d.queue("full", arguments={"x-max-length": 0, "x-overflow": "reject-publish-dlx"})
    return d.publish("", "full", "m", mandatory=True), d.count("full")
