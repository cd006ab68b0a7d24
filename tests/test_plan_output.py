"""Plan, apply and validate at human scale: amqptasks' own objects are one line per group unless --verbose.

`delays: {enabled: true}` provisions about 130 objects; a user reading a plan wants their own few lines, and
to see at a glance that the delay tiers, the dead-letter exchange and the unroutable collector are there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from amqptasks.broker import BrokerURL
from tests.cli_helpers import Result, run, write

# One exchange, one queue with its DLQ, and the delay tiers.
YAML = """
topology:
  exchanges: [{name: shop, type: topic}]
  queues:
    - {name: orders, dead_letter: auto, bindings: [{exchange: shop, routing_key: "orders.#"}]}
delays: {enabled: true}
"""
USERS_OWN = [
    "exchange 'shop'",
    "queue 'orders'",
    "queue 'orders.dlq'",
    "binding shop -> queue orders [orders.#]",
]
# 32 tiers (an exchange and a queue each) plus the exit exchange; the DLX; the unroutable exchange and queue.
FOLDED = [
    "delay tiers amqptasks.delay.*: 33 exchanges, 32 queues, 66 bindings",
    "dead-letter exchange amqptasks.dlx: 1 exchange, 1 binding",
    "unroutable collector amqptasks.unroutable: 1 exchange, 1 queue, 1 binding",
]
HINT = "note: amqptasks' own objects are counted on one line per group; --verbose lists each"


def amqptasks(tmp_path: Path, *args: str) -> Result:
    write(tmp_path, "app.yaml", YAML)
    return run(args, cwd=tmp_path)


def test_validate_counts_the_users_objects_apart_from_amqptasks_own(tmp_path: Path) -> None:
    result = amqptasks(tmp_path, "topology", "validate", "app.yaml")

    assert result.code == 0, str(result)
    assert result.stdout == (
        "app.yaml: valid (yours: 1 exchange, 2 queues, 1 binding; amqptasks' own: 35 exchanges, 33 queues, "
        "68 bindings)\n"
    )


@pytest.mark.broker
def test_plan_lists_the_users_objects_and_one_line_per_group_of_amqptasks_own(tmp_path: Path, vhost: BrokerURL) -> None:
    result = amqptasks(tmp_path, "topology", "plan", "app.yaml", "--broker", vhost.to_url())

    assert result.code == 0, str(result)
    assert result.change_lines == [f"+ create    {obj}" for obj in USERS_OWN] + [f"+ create    {g}" for g in FOLDED]
    assert HINT in result.stdout.splitlines()
    assert result.stdout.endswith("140 to create\n")
    assert len(result.stdout.splitlines()) == 1 + len(USERS_OWN) + len(FOLDED) + 2


@pytest.mark.broker
def test_plan_verbose_lists_every_delay_tier(tmp_path: Path, vhost: BrokerURL) -> None:
    result = amqptasks(tmp_path, "topology", "plan", "app.yaml", "--broker", vhost.to_url(), "--verbose")

    assert result.code == 0, str(result)
    assert len(result.change_lines) == 140
    assert "+ create    queue 'amqptasks.delay.31'" in result.change_lines
    assert HINT not in result.stdout


@pytest.mark.broker
def test_apply_folds_what_it_created_and_a_second_plan_says_unchanged_per_group(
    tmp_path: Path, vhost: BrokerURL
) -> None:
    applied = amqptasks(tmp_path, "topology", "apply", "app.yaml", "--broker", vhost.to_url())
    planned = amqptasks(tmp_path, "topology", "plan", "app.yaml", "--broker", vhost.to_url())

    assert applied.code == 0, str(applied)
    assert sorted(applied.change_lines) == sorted(f"+ create    {obj}" for obj in USERS_OWN + FOLDED)
    assert applied.stdout.endswith("140 created, 0 deleted, 0 unchanged\n")
    assert planned.change_lines == [f"= unchanged {obj}" for obj in USERS_OWN + FOLDED]


@pytest.mark.broker
def test_a_conflict_on_one_of_amqptasks_own_objects_is_shown_in_full(
    tmp_path: Path, vhost: BrokerURL, channel: Any
) -> None:
    # Given a delay tier queue someone declared with another TTL
    channel.queue_declare("amqptasks.delay.3", durable=True, arguments={"x-message-ttl": 1})

    # When the plan is read
    result = amqptasks(tmp_path, "topology", "plan", "app.yaml", "--broker", vhost.to_url())

    # Then that queue's conflict is its own line, with the value that differs
    conflicts = [line for line in result.change_lines if line.startswith("! conflict")]
    assert len(conflicts) == 1, str(result)
    assert conflicts[0].startswith("! conflict  queue 'amqptasks.delay.3': ")
    assert "x-message-ttl is 1 on the broker, 8 in the config" in conflicts[0]
    assert "delay tiers amqptasks.delay.*: 33 exchanges, 31 queues, 66 bindings" in result.stdout


@pytest.mark.broker
def test_plan_json_lists_every_object_and_says_which_are_amqptasks_own(tmp_path: Path, vhost: BrokerURL) -> None:
    result = amqptasks(tmp_path, "topology", "plan", "app.yaml", "--broker", vhost.to_url(), "--json")

    changes = result.json()["changes"]
    assert len(changes) == 140
    assert {c["name"] for c in changes if c["internal"] is None} == {
        "shop", "orders", "orders.dlq", "shop -> queue orders [orders.#]"
    }  # fmt: skip
    groups = {c["internal"] for c in changes} - {None}
    assert groups == {"delays", "dlx", "unroutable"}
