"""The ``delays:`` section: what it accepts, what it reserves, what it warns about, and the examples (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from amqptasks import topology
from amqptasks.config import Config, check_file, check_text
from amqptasks.constants import UNROUTABLE_EXCHANGE

CONFIG = Path(__file__).resolve().parent.parent / "config"
ON = "delays:\n  enabled: true\n"


def messages(text: str) -> list[str]:
    _, diags = check_text(text, "app.yaml", env={})
    return [str(d) for d in diags.items]


def test_delays_are_off_unless_enabled() -> None:
    config, _ = check_text("topology: {}\n", "app.yaml", env={})

    assert config is not None and config.delays.enabled is False


def test_a_misspelt_delays_key_is_an_error_with_a_hint() -> None:
    assert messages("delays:\n  enable: true\n") == [
        "app.yaml:2:3: delays: unknown key 'enable' (did you mean 'enabled'?)"
    ]


@pytest.mark.parametrize(
    ("declared", "column"),
    [
        ("exchanges: [{name: amqptasks.delay.3}]", 22),
        ("exchanges: [{name: amqptasks.unroutable, type: headers}]", 22),
        ("queues: [{name: amqptasks.delay.exit}]", 19),
        ("queues: [{name: amqptasks.unroutable}]", 19),
    ],
)
def test_with_delays_enabled_their_names_are_reserved(declared: str, column: int) -> None:
    text = f"topology:\n  {declared}\n"

    assert messages(text) == []
    [error] = messages(ON + text)
    assert error.startswith(f"app.yaml:4:{column}: ")
    assert "belong to the delay tiers (delays: enabled); rename it" in error


AE = """
topology:
  exchanges:
    - {name: events, type: topic, alternate_exchange: %s}
    - {name: lost, type: direct}
    - {name: kept, type: fanout}
  queues:
    - {name: lost, bindings: [{exchange: lost, routing_key: only-this}]}
    - {name: kept}
  bindings:
    - {exchange: kept, queue: kept}
"""


def test_an_alternate_exchange_that_may_route_a_delayed_message_nowhere_is_warned_about() -> None:
    [warning] = messages(ON + AE % "lost")

    assert warning.startswith("app.yaml:6:55: warning: exchange 'events': a delayed message it cannot route when due ")
    assert "goes to its alternate exchange 'lost', not to 'amqptasks.unroutable'" in warning
    assert "make 'lost' a fanout exchange bound to a queue, or remove alternate_exchange" in warning


@pytest.mark.parametrize("alternate", ["kept", UNROUTABLE_EXCHANGE])
def test_an_alternate_exchange_that_keeps_everything_is_fine(alternate: str) -> None:
    assert messages(ON + AE % alternate) == []


def test_without_delays_the_unroutable_exchange_does_not_exist() -> None:
    assert messages(AE % UNROUTABLE_EXCHANGE) == [
        "app.yaml:4:55: exchange 'events': exchange 'amqptasks.unroutable' is not declared"
    ]


def test_a_queue_may_be_bound_to_the_unroutable_exchange_to_watch_it() -> None:
    text = ON + "topology:\n  queues:\n    - name: alerts\n      bindings: [{exchange: amqptasks.unroutable}]\n"

    assert messages(text) == []
    config, _ = check_text(text, "app.yaml", env={})
    assert config is not None
    want = topology.desired(config.topology, config.delays)
    assert {b.destination for b in want.bindings if b.source == UNROUTABLE_EXCHANGE} == {UNROUTABLE_EXCHANGE, "alerts"}


# --- the examples --------------------------------------------------------------------------------------------------


def load(name: str) -> Config:
    config, diags = check_file(CONFIG / name, env={})
    assert config is not None, [str(d) for d in diags.items]
    return config


@pytest.mark.parametrize("name", ["minimal.yaml", "app.yaml"])
def test_the_examples_enable_delays(name: str) -> None:
    config = load(name)

    assert config.delays.enabled
    want = topology.desired(config.topology, config.delays)
    assert want.exchange("amqptasks.delay.31") is not None and want.queue(UNROUTABLE_EXCHANGE) is not None


def test_the_examples_agree_on_every_object_they_both_declare_delays_included() -> None:
    # The demo applies both to one vhost: RabbitMQ refuses to redeclare an exchange with another alternate-exchange.
    minimal, app = (topology.desired(c.topology, c.delays) for c in (load("minimal.yaml"), load("app.yaml")))

    shared_exchanges = {e.name for e in minimal.exchanges} & {e.name for e in app.exchanges}
    shared_queues = {q.name for q in minimal.queues} & {q.name for q in app.queues}

    assert {"tasks", "amqptasks.delay.0", "amqptasks.delay.exit", UNROUTABLE_EXCHANGE} <= shared_exchanges
    assert all(minimal.exchange(n) == app.exchange(n) for n in shared_exchanges)
    assert all(minimal.queue(n) == app.queue(n) for n in shared_queues)
    tasks = app.exchange("tasks")
    assert tasks is not None and tasks.arguments["alternate-exchange"] == UNROUTABLE_EXCHANGE


STREAM = """
topology:
  exchanges: [{name: tasks}]
  queues:
    - {name: audit, type: stream, bindings: [{exchange: tasks, routing_key: audit}]}
    - {name: archive, type: stream}
"""


def test_a_stream_bound_to_an_exchange_is_warned_about_because_delayed_messages_never_reach_it() -> None:
    assert messages(STREAM) == []
    [warning] = messages(ON + STREAM)

    assert warning.startswith("app.yaml:7:27: warning: queue 'audit': delayed messages published to 'tasks' never ")
    assert "on RabbitMQ 3.x, which drops dead-lettered messages routed to a stream" in warning


def test_the_exit_is_not_bound_to_streams_so_a_delayed_message_for_one_is_kept_as_unroutable() -> None:
    config, _ = check_text(ON + STREAM, "app.yaml", env={})
    assert config is not None

    want = topology.desired(config.topology, config.delays)

    assert not [b for b in want.bindings if b.destination in ("audit", "archive") and b.source != "tasks"]
