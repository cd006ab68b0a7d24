"""Routing: the default exchange, direct, fanout, topic, headers, exchange-to-exchange, alternate exchanges."""

from __future__ import annotations

from typing import Any

from tests.differential.driver import Driver
from tests.differential.table import scenario


def _queues(d: Driver, *names: str) -> None:
    for name in names:
        d.queue(name)


@scenario
def default_exchange_routes_by_queue_name(d: Driver) -> Any:
    _queues(d, "a", "b")
    sent = [
        d.publish("", "a", "1"),
        d.publish("", "b", "2"),
        d.publish("", "nowhere", "3", mandatory=True),
        d.publish("", "nowhere", "4"),
    ]
    return sent, d.drain("a"), d.drain("b")


@scenario
def direct_exchange_matches_the_exact_key(d: Driver) -> Any:
    d.exchange("x", "direct")
    _queues(d, "a", "b", "c")
    d.bind("a", "x", "k")
    d.bind("b", "x", "k")
    d.bind("c", "x", "other")
    sent = [d.publish("x", "k", "1"), d.publish("x", "other", "2"), d.publish("x", "K", "3", mandatory=True)]
    return sent, d.bodies("a"), d.bodies("b"), d.bodies("c")


@scenario
def fanout_exchange_ignores_the_key(d: Driver) -> Any:
    d.exchange("x", "fanout")
    _queues(d, "a", "b")
    d.bind("a", "x", "whatever")
    d.bind("b", "x")
    return d.publish("x", "anything", "1"), d.drain("a"), d.drain("b")


@scenario
def topic_star_and_hash(d: Driver) -> Any:
    d.exchange("x", "topic")
    patterns = {"star": "a.*.c", "hash": "a.#", "mid": "*.b.#", "exact": "a.b", "all": "#"}
    for name, pattern in patterns.items():
        d.queue(name)
        d.bind(name, "x", pattern)
    keys = ["a.b.c", "a", "a.b", "x.b", "a.b.c.d", "", "a.x.c", "b"]
    sent = [d.publish("x", key, key or "(empty)", mandatory=True) for key in keys]
    return sent, {name: d.bodies(name) for name in patterns}


@scenario
def topic_hash_in_the_middle_and_empty_words(d: Driver) -> Any:
    d.exchange("x", "topic")
    patterns = {"q1": "a.#.z", "q2": "#.z", "q3": "a..z", "q4": "*"}
    for name, pattern in patterns.items():
        d.queue(name)
        d.bind(name, "x", pattern)
    keys = ["a.z", "a.b.z", "a.b.c.z", "z", "a..z", "a", "", ".z"]
    sent = [d.publish("x", key, key or "(empty)", mandatory=True) for key in keys]
    return sent, {name: d.bodies(name) for name in patterns}


@scenario
def headers_exchange_all_and_any(d: Driver) -> Any:
    d.exchange("x", "headers")
    _queues(d, "all", "any", "empty-all", "empty-any")
    d.bind("all", "x", "", {"x-match": "all", "kind": "pdf", "size": 1})
    d.bind("any", "x", "", {"x-match": "any", "kind": "pdf", "size": 1})
    d.bind("empty-all", "x", "", {"x-match": "all"})
    d.bind("empty-any", "x", "", {"x-match": "any"})
    messages = {
        "both": {"kind": "pdf", "size": 1},
        "kind": {"kind": "pdf"},
        "size-other": {"kind": "doc", "size": 1},
        "none": {"other": "x"},
        "str-size": {"kind": "pdf", "size": "1"},
        "no-headers": None,
    }
    sent = [d.publish("x", "", name, headers=headers) for name, headers in messages.items()]
    return sent, {q: d.bodies(q) for q in ("all", "any", "empty-all", "empty-any")}


@scenario
def headers_exchange_ignores_x_arguments(d: Driver) -> Any:
    d.exchange("x", "headers")
    d.queue("q")
    d.bind("q", "x", "", {"x-match": "all", "x-custom": "1", "kind": "a"})
    sent = [
        d.publish("x", "", "plain", headers={"kind": "a"}),
        d.publish("x", "", "x-too", headers={"kind": "a", "x-custom": "2"}),
    ]
    return sent, d.bodies("q")


@scenario
def headers_exchange_ignores_the_routing_key(d: Driver) -> Any:
    d.exchange("x", "headers")
    d.queue("q")
    d.bind("q", "x", "some-key", {"k": "v"})
    return d.publish("x", "other-key", "1", headers={"k": "v"}), d.drain("q")


@scenario
def exchange_to_exchange_chain(d: Driver) -> Any:
    d.exchange("front", "direct")
    d.exchange("middle", "topic")
    d.exchange("back", "fanout")
    _queues(d, "topic-q", "fan-q", "front-q")
    d.bind_exchange("middle", "front", "orders.new")
    d.bind_exchange("back", "middle", "orders.*")
    d.bind("topic-q", "middle", "#")
    d.bind("fan-q", "back")
    d.bind("front-q", "front", "orders.new")
    sent = [d.publish("front", "orders.new", "1"), d.publish("front", "orders.old", "2", mandatory=True)]
    return sent, d.drain("topic-q"), d.drain("fan-q"), d.drain("front-q")


@scenario
def exchange_cycle_delivers_one_copy_per_queue(d: Driver) -> Any:
    d.exchange("a", "fanout")
    d.exchange("b", "fanout")
    _queues(d, "qa", "qb")
    d.bind_exchange("b", "a")
    d.bind_exchange("a", "b")
    d.bind("qa", "a")
    d.bind("qb", "b")
    d.bind("qa", "b")
    return d.publish("a", "k", "once"), d.bodies("qa"), d.bodies("qb")


@scenario
def alternate_exchange_takes_what_nothing_matches(d: Driver) -> Any:
    d.exchange("ae", "fanout")
    d.exchange("x", "direct", arguments={"alternate-exchange": "ae"})
    _queues(d, "matched", "unrouted")
    d.bind("matched", "x", "k")
    d.bind("unrouted", "ae")
    sent = [d.publish("x", "k", "1", mandatory=True), d.publish("x", "other", "2", mandatory=True)]
    return sent, d.drain("matched"), d.drain("unrouted")


@scenario
def alternate_exchange_is_not_used_when_an_exchange_binding_matches(d: Driver) -> Any:
    d.exchange("ae", "fanout")
    d.exchange("dead-end", "direct")
    d.exchange("x", "direct", arguments={"alternate-exchange": "ae"})
    d.queue("unrouted")
    d.bind("unrouted", "ae")
    d.bind_exchange("dead-end", "x", "k")
    sent = [d.publish("x", "k", "to-dead-end", mandatory=True), d.publish("x", "z", "to-ae", mandatory=True)]
    return sent, d.bodies("unrouted")


@scenario
def alternate_exchange_chain_and_missing_alternate(d: Driver) -> Any:
    d.exchange("ae2", "fanout")
    d.exchange("ae1", "direct", arguments={"alternate-exchange": "ae2"})
    d.exchange("x", "direct", arguments={"alternate-exchange": "ae1"})
    d.exchange("lost", "direct", arguments={"alternate-exchange": "does-not-exist"})
    d.queue("last")
    d.bind("last", "ae2")
    sent = [d.publish("x", "k", "1", mandatory=True), d.publish("lost", "k", "2", mandatory=True)]
    return sent, d.drain("last")


@scenario
def internal_exchange_refuses_publishes_but_routes_bound_traffic(d: Driver) -> Any:
    d.exchange("inner", "fanout", internal=True)
    d.exchange("outer", "fanout")
    d.queue("q")
    d.bind_exchange("inner", "outer")
    d.bind("q", "inner")
    direct = d.attempt(lambda: d.publish("inner", "", "direct"))
    return direct, d.publish("outer", "", "via-outer"), d.bodies("q")


@scenario
def unbinding_stops_routing(d: Driver) -> Any:
    d.exchange("x", "direct")
    d.queue("q")
    d.bind("q", "x", "k")
    first = d.publish("x", "k", "1", mandatory=True)
    d.unbind("q", "x", "k")
    return first, d.publish("x", "k", "2", mandatory=True), d.bodies("q")


@scenario
def publishing_to_a_missing_exchange_closes_the_channel(d: Driver) -> Any:
    d.queue("q")
    refused = d.attempt(lambda: d.publish("missing", "k", "1"))
    return refused, d.publish("", "q", "after"), d.bodies("q")


@scenario
def headers_exchange_any_with_x_and_all_with_x(d: Driver) -> Any:
    d.exchange("x", "headers")
    d.queue("any-x")
    d.queue("all-x")
    d.bind("any-x", "x", "", {"x-match": "any-with-x", "x-tag": "t", "kind": "k"})
    d.bind("all-x", "x", "", {"x-match": "all-with-x", "x-tag": "t", "kind": "k"})
    sent = [
        d.publish("x", "", "x-only", headers={"x-tag": "t"}),
        d.publish("x", "", "both", headers={"x-tag": "t", "kind": "k"}),
        d.publish("x", "", "kind-only", headers={"kind": "k"}),
    ]
    return sent, d.bodies("any-x"), d.bodies("all-x")


@scenario
def cc_and_bcc_headers_add_routing_keys(d: Driver) -> Any:
    d.exchange("x", "direct")
    for name in ("main", "copy", "hidden"):
        d.queue(name)
        d.bind(name, "x", name)
    sent = d.publish("x", "main", "m", headers={"CC": ["copy"], "BCC": ["hidden"], "keep": 1})
    return sent, d.drain("main"), d.drain("copy"), d.drain("hidden")


@scenario
def an_alternate_exchange_downstream_of_an_exchange_binding(d: Driver) -> Any:
    d.exchange("ae", "fanout")
    d.exchange("inner", "direct", arguments={"alternate-exchange": "ae"})
    d.exchange("outer", "fanout")
    d.queue("caught")
    d.bind("caught", "ae")
    d.bind_exchange("inner", "outer")
    return d.publish("outer", "unbound-key", "m", mandatory=True), d.drain("caught")


@scenario
def headers_binding_with_a_void_value_matches_presence(d: Driver) -> Any:
    d.exchange("x", "headers")
    d.queue("q")
    d.bind("q", "x", "", {"x-match": "all", "flag": None})
    sent = [
        d.publish("x", "", "with-flag", headers={"flag": "anything"}),
        d.publish("x", "", "without", headers={"other": 1}),
    ]
    return sent, d.bodies("q")


@scenario
def topic_patterns_of_wildcards_only(d: Driver) -> Any:
    d.exchange("x", "topic")
    patterns = {"two-stars": "*.*", "hash-hash": "#.#", "star-hash": "*.#", "hash-star": "#.*"}
    for name, pattern in patterns.items():
        d.queue(name)
        d.bind(name, "x", pattern)
    keys = ["", "a", "a.b", "a.b.c"]
    sent = [d.publish("x", key, key or "(empty)", mandatory=True) for key in keys]
    return sent, {name: d.bodies(name) for name in patterns}
