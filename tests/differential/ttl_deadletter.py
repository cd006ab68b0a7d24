"""TTL (per queue, per message, at the head), dead-lettering, x-death, and the cycle rule."""

from __future__ import annotations

from typing import Any

from tests.differential.driver import Driver
from tests.differential.table import scenario


def _dlx(d: Driver, queue: str = "dlq", key: str = "#") -> None:
    d.exchange("dlx", "topic")
    d.queue(queue)
    d.bind(queue, "dlx", key)


@scenario
def queue_ttl_dead_letters_with_x_death(d: Driver) -> Any:
    _dlx(d)
    d.queue("q", arguments={"x-message-ttl": 100, "x-dead-letter-exchange": "dlx"})
    d.publish("", "q", "1", headers={"mine": "kept"})
    d.elapse(0.15, until=lambda: d.count("dlq") == 1)
    return d.count("q"), d.drain("dlq")


@scenario
def message_ttl_dead_letters_with_original_expiration(d: Driver) -> Any:
    _dlx(d)
    d.queue("q", arguments={"x-dead-letter-exchange": "dlx"})
    d.publish("", "q", "short", expiration=50)
    d.publish("", "q", "long", expiration=60_000)
    d.elapse(0.1, until=lambda: d.count("dlq") == 1)
    return d.drain("dlq"), d.drain("q")


@scenario
def shorter_of_queue_and_message_ttl_applies(d: Driver) -> Any:
    _dlx(d)
    # Far apart, so that a loaded machine's real broker still sees them one at a time.
    d.queue("q", arguments={"x-message-ttl": 800, "x-dead-letter-exchange": "dlx"})
    d.publish("", "q", "message-shorter", expiration=30)
    d.publish("", "q", "queue-shorter", expiration=60_000)
    d.elapse(0.05, until=lambda: d.count("dlq") == 1)
    first = d.bodies("dlq")
    d.elapse(0.8, until=lambda: d.count("dlq") == 1)
    return first, d.drain("dlq")


@scenario
def expiry_happens_at_the_head_only(d: Driver) -> Any:
    _dlx(d)
    d.queue("q", arguments={"x-dead-letter-exchange": "dlx"})
    d.publish("", "q", "head-lives-long", expiration=1000)
    d.publish("", "q", "behind-expires-soon", expiration=50)
    d.elapse(0.15)
    still = d.count("q"), d.count("dlq")  # the second expired, but waits behind the head
    d.elapse(0.9, until=lambda: d.count("dlq") == 2)
    return still, d.bodies("dlq"), d.count("q")


@scenario
def zero_ttl_expires_at_once(d: Driver) -> Any:
    _dlx(d)
    d.queue("q", arguments={"x-dead-letter-exchange": "dlx"})
    d.publish("", "q", "gone", expiration=0)
    d.elapse(0.0, until=lambda: d.count("dlq") == 1)
    return d.get("q"), d.bodies("dlq")


@scenario
def dead_letter_routing_key_overrides_the_original(d: Driver) -> Any:
    _dlx(d, "dlq", "dead.#")
    d.queue("other")
    d.bind("other", "dlx", "orig")
    d.queue("q", arguments={"x-dead-letter-exchange": "dlx", "x-dead-letter-routing-key": "dead.q"})
    d.queue("q2", arguments={"x-dead-letter-exchange": "dlx"})
    d.exchange("in", "direct")
    d.bind("q", "in", "orig")
    d.bind("q2", "in", "orig")
    d.publish("in", "orig", "1")
    for queue in ("q", "q2"):
        got = d.get(queue)
        assert got is not None
        d.reject(got.tag, requeue=False)
    d.arrived("dlq")
    d.arrived("other")
    return d.drain("dlq"), d.drain("other")


@scenario
def reject_and_nack_without_requeue_dead_letter_as_rejected(d: Driver) -> Any:
    _dlx(d)
    d.queue("q", arguments={"x-dead-letter-exchange": "dlx"})
    d.publish("", "q", "rejected")
    d.publish("", "q", "nacked")
    first, second = d.get("q"), d.get("q")
    assert first is not None and second is not None
    d.reject(first.tag, requeue=False)
    d.nack(second.tag, requeue=False)
    d.arrived("dlq", 2)
    return d.count("q"), d.drain("dlq")


@scenario
def x_death_counts_repeated_rejections(d: Driver) -> Any:
    # q rejects into dlx, which routes straight back to q: rejections never count as a cycle.
    d.exchange("dlx", "fanout")
    d.queue("q", arguments={"x-dead-letter-exchange": "dlx"})
    d.bind("q", "dlx")
    d.publish("", "q", "loop")
    for _ in range(3):
        d.arrived("q")
        got = d.get("q")
        assert got is not None
        d.reject(got.tag, requeue=False)
    d.arrived("q")
    return d.drain("q")


@scenario
def x_death_keeps_one_entry_per_queue_and_reason(d: Driver) -> Any:
    # a (TTL) -> b (rejected) -> a -> b: entries for (a, expired) and (b, rejected), most recent first.
    d.exchange("to-b", "fanout")
    d.exchange("to-a", "fanout")
    d.queue("a", arguments={"x-message-ttl": 50, "x-dead-letter-exchange": "to-b"})
    d.queue("b", arguments={"x-dead-letter-exchange": "to-a"})
    d.bind("b", "to-b")
    d.bind("a", "to-a")
    d.publish("", "a", "m")
    seen = []
    for _ in range(2):
        d.elapse(0.1, until=lambda: d.count("b") == 1)
        got = d.get("b")
        assert got is not None
        seen.append(got.seen())
        d.reject(got.tag, requeue=False)
    d.elapse(0.1, until=lambda: d.count("b") == 1)
    return seen, d.drain("b")


@scenario
def expiry_cycle_back_to_the_same_queue_is_dropped(d: Driver) -> Any:
    d.exchange("back", "fanout")
    d.queue("q", arguments={"x-message-ttl": 50, "x-dead-letter-exchange": "back"})
    d.queue("witness")
    d.bind("q", "back")
    d.bind("witness", "back")
    d.publish("", "q", "m")
    d.elapse(0.1, until=lambda: d.count("witness") == 1)
    d.elapse(0.1)
    return d.count("q"), d.drain("witness")


@scenario
def expiry_cycle_through_two_queues_is_dropped(d: Driver) -> Any:
    d.exchange("to-b", "fanout")
    d.exchange("to-a", "fanout")
    d.queue("a", arguments={"x-message-ttl": 40, "x-dead-letter-exchange": "to-b"})
    d.queue("b", arguments={"x-message-ttl": 40, "x-dead-letter-exchange": "to-a"})
    d.queue("witness")
    d.bind("b", "to-b")
    d.bind("a", "to-a")
    d.bind("witness", "to-a")
    d.publish("", "a", "m")
    d.elapse(0.1, until=lambda: d.count("witness") == 1)
    d.elapse(0.1)
    return d.count("a"), d.count("b"), d.drain("witness")


@scenario
def cycle_with_a_rejection_in_it_is_kept(d: Driver) -> Any:
    d.exchange("to-b", "fanout")
    d.exchange("to-a", "fanout")
    d.queue("a", arguments={"x-dead-letter-exchange": "to-b"})
    d.queue("b", arguments={"x-message-ttl": 40, "x-dead-letter-exchange": "to-a"})
    d.bind("b", "to-b")
    d.bind("a", "to-a")
    d.publish("", "a", "m")
    got = d.get("a")
    assert got is not None
    d.reject(got.tag, requeue=False)
    d.elapse(0.1, until=lambda: d.count("a") == 1)
    return d.drain("a")


@scenario
def missing_dead_letter_exchange_drops_the_message(d: Driver) -> Any:
    d.queue("q", arguments={"x-dead-letter-exchange": "not-declared"})
    d.publish("", "q", "m")
    got = d.get("q")
    assert got is not None
    d.reject(got.tag, requeue=False)
    return d.count("q"), d.get("q")


@scenario
def expired_then_rejected_keeps_both_deaths(d: Driver) -> Any:
    d.exchange("dlx-a", "fanout")
    d.exchange("dlx-b", "fanout")
    d.queue("a", arguments={"x-message-ttl": 50, "x-dead-letter-exchange": "dlx-a"})
    d.queue("b", arguments={"x-dead-letter-exchange": "dlx-b"})
    d.queue("final")
    d.bind("b", "dlx-a")
    d.bind("final", "dlx-b")
    d.publish("", "a", "m", headers={"trace": 1})
    d.elapse(0.1, until=lambda: d.count("b") == 1)
    got = d.get("b")
    assert got is not None
    d.reject(got.tag, requeue=False)
    d.arrived("final")
    return got.seen(), d.drain("final")


@scenario
def a_requeued_message_keeps_its_expiry(d: Driver) -> Any:
    _dlx(d)
    d.queue("q", arguments={"x-message-ttl": 200, "x-dead-letter-exchange": "dlx"})
    d.publish("", "q", "m")
    got = d.get("q")
    assert got is not None
    d.elapse(0.1)
    d.nack(got.tag, requeue=True)
    d.elapse(0.2, until=lambda: d.count("dlq") == 1)
    return d.count("q"), d.drain("dlq")


@scenario
def ttl_on_a_priority_queue_is_looked_at_when_rabbitmq_looks(d: Driver) -> Any:
    # RabbitMQ 3.10 sets its TTL timer for the head when a message becomes the only one, not when a later, more
    # urgent one goes ahead of it: a short-lived message ahead of a long-lived first one stays, and is delivered.
    _dlx(d)
    cases = {
        "short-first": [("s", 2, 50), ("l", 0, 60_000)],
        "long-first": [("l", 0, 60_000), ("s", 2, 50)],
        "long-first-then-two": [("l0", 0, 60_000), ("s", 2, 50), ("l2", 2, 60_000)],
        "both-short": [("s1", 1, 50), ("s2", 2, 50)],
        "short-behind-long-head": [("s0", 0, 50), ("l2", 2, 60_000)],
    }
    for name, sent in cases.items():
        d.queue(name, arguments={"x-max-priority": 2, "x-dead-letter-exchange": "dlx"})
        for body, priority, ttl in sent:
            d.publish("", name, body, priority=priority, expiration=ttl)
    d.elapse(0.3, until=lambda: d.count("dlq") == 3)
    d.elapse(0.1)
    counts = {name: d.count(name) for name in cases}
    first = d.get("long-first-then-two")
    assert first is not None
    return counts, first.seen(), d.bodies("dlq")


@scenario
def quorum_queue_message_ttl_dead_letters(d: Driver) -> Any:
    _dlx(d)
    d.queue("q", arguments={"x-queue-type": "quorum", "x-message-ttl": 50, "x-dead-letter-exchange": "dlx"})
    d.publish("", "q", "m")
    d.elapse(0.1, until=lambda: d.count("dlq") == 1)
    return d.count("q"), d.drain("dlq")


@scenario
def dead_lettering_through_the_default_exchange(d: Driver) -> Any:
    d.queue("parking")
    d.queue("q", arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "parking"})
    d.publish("", "q", "m", priority=3)
    got = d.get("q")
    assert got is not None
    d.reject(got.tag, requeue=False)
    d.arrived("parking")
    return d.drain("parking")


@scenario
def an_invalid_expiration_is_refused(d: Driver) -> Any:
    d.queue("q")
    refused = []
    for value in ("abc", "-1", "1.5"):
        envelope_refusal = d.attempt(lambda v=value: d.publish_raw_expiration("q", v))
        refused.append(envelope_refusal)
    return refused, d.count("q")


@scenario
def a_dead_letter_keeps_its_cc_routing_keys(d: Driver) -> Any:
    d.exchange("in", "direct")
    d.exchange("dlx", "direct")
    d.queue("q", arguments={"x-dead-letter-exchange": "dlx"})
    d.bind("q", "in", "main")
    for name in ("dl-main", "dl-copy", "dl-hidden"):
        d.queue(name)
        d.bind(name, "dlx", name.removeprefix("dl-"))
    d.publish("in", "main", "m", headers={"CC": ["copy"], "BCC": ["hidden"]})
    got = d.get("q")
    assert got is not None
    d.reject(got.tag, requeue=False)
    d.arrived("dl-main")
    d.elapse(0.05)
    return d.drain("dl-main"), d.drain("dl-copy"), d.drain("dl-hidden")


@scenario
def a_dead_letter_routing_key_replaces_the_cc_keys(d: Driver) -> Any:
    d.exchange("dlx", "direct")
    d.queue("q", arguments={"x-dead-letter-exchange": "dlx", "x-dead-letter-routing-key": "main"})
    for name in ("main", "copy"):
        d.queue(f"dl-{name}")
        d.bind(f"dl-{name}", "dlx", name)
    d.publish("", "q", "m", headers={"CC": ["copy"]})
    got = d.get("q")
    assert got is not None
    d.reject(got.tag, requeue=False)
    d.arrived("dl-main")
    d.elapse(0.05)
    return d.drain("dl-main"), d.drain("dl-copy")
