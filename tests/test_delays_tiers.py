"""The delay tiers and the headers that steer a message through them (pure: no broker).

A small simulation of RabbitMQ's routing (headers exchanges, x-match all, queue TTL, dead-lettering without a
routing key) walks a message through the declared tiers, so the tests check the topology against the route, not
the code against itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from amqptasks.config import load_config_text
from amqptasks.constants import DELAY_EXIT_EXCHANGE, DELAY_TARGET_HEADER, DELAYED_HEADER, UNROUTABLE_EXCHANGE
from amqptasks.delays import LEVELS, MAX_DELAY_MS, route, tier_topology
from amqptasks.delays.tiers import ENTRY_EXCHANGE
from amqptasks.message.protocol import DEATH_HEADERS
from amqptasks.topology import BindingDecl, DesiredTopology, desired


def bits(headers: Mapping[str, Any]) -> str:
    """The delay headers as a binary number, level 31 first."""
    return "".join(str(headers[f"amqptasks.d{level}"]) for level in reversed(range(LEVELS)))


def matches(binding: BindingDecl, headers: Mapping[str, Any]) -> bool:
    wanted = {k: v for k, v in binding.arguments.items() if k != "x-match"}
    assert binding.arguments.get("x-match") == "all"
    return all(headers.get(k) == v for k, v in wanted.items())


def walk(topology: DesiredTopology, exchange: str, headers: Mapping[str, Any]) -> tuple[int, list[str]]:
    """Where a message published to *exchange* ends: (ms spent in tier queues, queues reached at the end)."""
    waited = 0
    while True:
        reached = _route(topology, exchange, headers, set())
        tiers = [q for q in topology.queues if q.name in reached and "x-message-ttl" in q.arguments]
        if not tiers:
            return waited, reached
        [tier] = tiers  # a delayed message is in one tier at a time
        assert reached == [tier.name] and "x-dead-letter-routing-key" not in tier.arguments
        waited += int(tier.arguments["x-message-ttl"])
        exchange = str(tier.arguments["x-dead-letter-exchange"])


def _route(topology: DesiredTopology, exchange: str, headers: Mapping[str, Any], seen: set[str]) -> list[str]:
    seen.add(exchange)
    out = [b for b in topology.bindings if b.source == exchange and matches(b, headers)]
    queues = [b.destination for b in out if b.destination_type == "queue"]
    for b in out:
        if b.destination_type == "exchange" and b.destination not in seen:
            queues += _route(topology, b.destination, headers, seen)
    decl = topology.exchange(exchange)
    if not out and decl is not None and "alternate-exchange" in decl.arguments:
        queues += _route(topology, str(decl.arguments["alternate-exchange"]), headers, seen)
    return queues


def tiers_only() -> DesiredTopology:
    exchanges, queues, bindings = tier_topology(["events"], ["inbox"])
    return DesiredTopology(tuple(exchanges), tuple(queues), tuple(bindings))


# --- route: the headers of a delayed message -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("delay_ms", "expected"),
    [(0, 0), (1, 1), (150, 150), (2000, 2000), (4095, 4095), (2**31, 2**31), (MAX_DELAY_MS, MAX_DELAY_MS)],
)
def test_route_sets_one_header_per_level_holding_the_bits_of_the_delay(delay_ms: int, expected: int) -> None:
    delayed = route(delay_ms, exchange="events")

    assert delayed.exchange == ENTRY_EXCHANGE == "amqptasks.delay.31"
    assert int(bits(delayed.headers), 2) == expected
    assert set(delayed.headers.values()) <= {"0", "1", "exchange:events"}


@pytest.mark.parametrize(("delay_ms", "expected"), [(0.001, 1), (1.2, 2), (1999.0001, 2000), (2000.0, 2000)])
def test_fractional_delays_round_up_so_a_message_is_never_early(delay_ms: float, expected: int) -> None:
    assert int(bits(route(delay_ms, queue="inbox").headers), 2) == expected


def test_a_delay_longer_than_the_tiers_can_hold_is_refused_with_the_limit() -> None:
    route(MAX_DELAY_MS, queue="inbox")

    with pytest.raises(ValueError, match=r"at most 4294967295 ms .*49\.7 days"):
        route(MAX_DELAY_MS + 0.5, queue="inbox")
    with pytest.raises(ValueError, match="at most"):
        route(50 * 24 * 3600 * 1000, exchange="events")


@pytest.mark.parametrize("delay_ms", [-1, float("nan"), float("inf")])
def test_negative_or_non_finite_delays_are_refused(delay_ms: float) -> None:
    with pytest.raises(ValueError, match="delay must be"):
        route(delay_ms, queue="inbox")


def test_route_names_its_target_in_a_header_and_marks_the_message_delayed() -> None:
    assert route(5, exchange="events").headers[DELAY_TARGET_HEADER] == "exchange:events"
    assert route(5, queue="inbox").headers[DELAY_TARGET_HEADER] == "queue:inbox"
    assert route(5, exchange="", queue="inbox").headers[DELAY_TARGET_HEADER] == "queue:inbox"
    assert route(5, queue="inbox").headers[DELAYED_HEADER] == "1"


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ({}, "exactly one"),
        ({"exchange": "events", "queue": "inbox"}, "exactly one"),
        ({"exchange": ""}, "give queue="),
        ({"queue": ""}, "must name a queue"),
    ],
)
def test_route_needs_exactly_one_target(target: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        route(10, **target)


def test_route_keeps_the_message_headers_but_not_its_dead_letter_history() -> None:
    history = {name: [{"queue": "amqptasks.delay.3", "reason": "expired"}] for name in DEATH_HEADERS}
    old_bits = route(7, queue="inbox").headers

    delayed = route(8, queue="inbox", headers={**old_bits, **history, "id": "t-1", "retries": 2})

    assert not DEATH_HEADERS & set(delayed.headers)
    assert (delayed.headers["id"], delayed.headers["retries"]) == ("t-1", 2)
    assert int(bits(delayed.headers), 2) == 8  # the previous delay's bits are overwritten, not merged


# --- tier_topology: what is declared ---------------------------------------------------------------------------------


def test_each_level_holds_a_message_for_a_power_of_two_ms_then_dead_letters_it_one_level_down() -> None:
    _, queues, _ = tier_topology([], [])
    tiers = {q.name: q for q in queues if q.name != UNROUTABLE_EXCHANGE}

    assert len(tiers) == LEVELS
    for level in range(LEVELS):
        args = tiers[f"amqptasks.delay.{level}"].arguments
        below = f"amqptasks.delay.{level - 1}" if level else DELAY_EXIT_EXCHANGE
        # No dead-letter routing key: the message keeps its own all the way down.
        assert args == {"x-message-ttl": 2**level, "x-dead-letter-exchange": below}


def test_every_delay_exchange_is_a_durable_headers_exchange_and_the_exit_has_the_unroutable_alternate() -> None:
    exchanges, queues, _ = tier_topology(["events"], ["inbox"])

    assert {(e.type, e.durable, e.auto_delete, e.internal) for e in exchanges} == {("headers", True, False, False)}
    assert all(q.durable and not q.exclusive and not q.auto_delete for q in queues)
    arguments = {e.name: dict(e.arguments) for e in exchanges if e.arguments}
    assert arguments == {DELAY_EXIT_EXCHANGE: {"alternate-exchange": UNROUTABLE_EXCHANGE}}


def test_no_binding_header_starts_with_x_because_headers_exchanges_ignore_those() -> None:
    _, _, bindings = tier_topology(["events"], ["inbox"])

    assert all(k == "x-match" or not k.startswith("x-") for b in bindings for k in b.arguments)


@pytest.mark.parametrize("delay_ms", [0, 1, 2, 3, 150, 1000, 2000, 4095, 65_537, 2**31 - 1, 2**31, MAX_DELAY_MS])
@pytest.mark.parametrize(("target", "reaches"), [({"exchange": "events"}, "events"), ({"queue": "inbox"}, "inbox")])
def test_a_delayed_message_waits_exactly_its_delay_and_leaves_for_its_target(
    delay_ms: int, target: dict[str, str], reaches: str
) -> None:
    topology = tiers_only()
    delayed = route(delay_ms, **target)

    waited, reached = walk(topology, delayed.exchange, delayed.headers)

    assert waited == delay_ms
    # The exit forwards to exchange 'events' (whose own bindings are not part of this topology) or to the queue.
    assert reached == ([] if reaches == "events" else ["inbox"])
    exit_bindings = [b for b in topology.bindings if b.source == DELAY_EXIT_EXCHANGE and matches(b, delayed.headers)]
    assert [b.destination for b in exit_bindings] == [reaches]


def test_a_delayed_message_for_an_unknown_target_ends_in_the_unroutable_queue() -> None:
    delayed = route(300, exchange="nowhere")

    assert walk(tiers_only(), delayed.exchange, delayed.headers) == (300, [UNROUTABLE_EXCHANGE])


def test_a_message_without_the_delayed_mark_is_not_kept_by_the_unroutable_queue() -> None:
    headers = {k: v for k, v in route(0, exchange="nowhere").headers.items() if k != DELAYED_HEADER}

    assert walk(tiers_only(), DELAY_EXIT_EXCHANGE, headers) == (0, [])


# --- desired(): the tiers in the whole topology ----------------------------------------------------------------------

YAML = """
topology:
  exchanges:
    - {name: tasks, type: direct}
    - {name: events, type: topic, alternate_exchange: trash}
    - {name: trash, type: fanout}
  queues:
    - {name: billing, dead_letter: auto, bindings: [{exchange: tasks, routing_key: billing}]}
    - {name: trash, bindings: [{exchange: trash}]}
  bindings:
    - {exchange: events, to_exchange: tasks, routing_key: "billing.#"}
"""


def test_without_delays_enabled_the_topology_is_unchanged() -> None:
    config = load_config_text(YAML, "app.yaml")

    assert config.delays.enabled is False
    assert desired(config.topology, config.delays) == desired(config.topology)
    assert not [e for e in desired(config.topology).exchanges if e.name.startswith("amqptasks.delay")]


def test_with_delays_on_exchanges_without_an_alternate_get_the_unroutable_one_pointing_at_the_delays_line() -> None:
    text = YAML + "delays:\n  enabled: true\n"
    config = load_config_text(text, "app.yaml")

    topology = desired(config.topology, config.delays)

    alternates = {e.name: e.arguments.get("alternate-exchange") for e in topology.exchanges}
    assert {n: alternates[n] for n in ("tasks", "events", "trash")} == {
        "tasks": UNROUTABLE_EXCHANGE,
        "events": "trash",  # its own stays
        "trash": UNROUTABLE_EXCHANGE,
    }
    assert alternates["amqptasks.dlx"] is None  # not the YAML's: left as it was, so other configs still agree
    tasks = topology.exchange("tasks")
    assert tasks is not None
    where = tasks.locs["alternate-exchange"]
    assert (where.file, where.line) == ("app.yaml", text.splitlines().index("  enabled: true") + 1)


def test_with_delays_enabled_the_exit_is_bound_to_every_yaml_exchange_and_queue() -> None:
    config = load_config_text(YAML + "delays: {enabled: true}\n", "app.yaml")

    topology = desired(config.topology, config.delays)

    exits = {(b.destination_type, b.destination) for b in topology.bindings if b.source == DELAY_EXIT_EXCHANGE}
    assert exits == {("exchange", "tasks"), ("exchange", "events"), ("exchange", "trash")} | {
        ("queue", "billing"),
        ("queue", "trash"),
    }
    assert len(topology.exchanges) == 3 + 1 + LEVELS + 2  # YAML, amqptasks.dlx, tiers, exit and unroutable
    assert len(topology.queues) == 2 + 1 + LEVELS + 1  # YAML, billing.dlq, tiers and unroutable


def test_exchange_bindings_are_created_downstream_first_so_no_tier_forwards_into_a_missing_binding() -> None:
    config = load_config_text(YAML + "delays: {enabled: true}\n", "app.yaml")

    bindings = desired(config.topology, config.delays).bindings

    kinds = [b.destination_type for b in bindings]
    assert kinds == sorted(kinds, key=lambda kind: kind == "exchange")  # queue bindings first
    position = {(b.source, b.destination): i for i, b in enumerate(bindings)}
    for b in bindings:
        if b.destination_type == "exchange":
            later = [position[(o.source, o.destination)] for o in bindings if o.source == b.destination]
            assert all(p < position[(b.source, b.destination)] for p in later), b.describe()
