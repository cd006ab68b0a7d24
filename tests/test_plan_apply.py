"""Plan and apply against the real broker: idempotency, all-or-nothing conflicts, prune, AMQP probing."""

from __future__ import annotations

from typing import Any

import pika
import pytest

from amqptasks.broker import BrokerURL, ManagementClient
from amqptasks.config import load_config_text
from amqptasks.errors import TopologyConflict
from amqptasks.topology import desired, plan, provision
from tests.topology_helpers import provisioned

BASE = """
topology:
  exchanges:
    - {name: tasks, type: topic}
    - {name: upstream, type: topic}
  queues:
    - name: billing
      max_priority: 5
      dead_letter: auto
      bindings: [{exchange: tasks, routing_key: "billing.*"}]
{extra}  bindings:
    - {exchange: upstream, to_exchange: tasks, routing_key: "#"}
"""
NEW_QUEUE = "    - {name: brand-new}\n"


def _base(extra: str = "") -> str:
    return BASE.replace("{extra}", extra)


def _config(vhost: BrokerURL, text: str, *, probe: bool = False) -> Any:
    if probe:  # an unreachable management API makes the planner fall back to AMQP probing
        text = 'broker: {management_url: "http://127.0.0.1:9"}\n' + text
    return load_config_text(text, "app.yaml", broker_url=vhost.to_url())


def _actions(the_plan: Any) -> dict[str, str]:
    return {f"{c.kind} {c.name}": c.action for c in the_plan.changes}


def test_plan_on_an_empty_vhost_creates_everything_including_the_auto_dlq(vhost: BrokerURL) -> None:
    the_plan = plan(_config(vhost, _base()))
    assert set(_actions(the_plan).values()) == {"create"}
    assert {"queue billing.dlq", "exchange amqptasks.dlx", "queue billing"} <= set(_actions(the_plan))
    assert the_plan.has_changes


def test_apply_is_idempotent(vhost: BrokerURL) -> None:
    config = _config(vhost, _base())
    first_plan, first = provision(config)
    second_plan, second = provision(config)
    assert first.count("create") == len(first_plan.changes) == 8
    assert second.done == []
    assert not second_plan.has_changes
    assert set(_actions(second_plan).values()) == {"unchanged"}


def test_conflicting_change_is_refused_and_nothing_is_created(vhost: BrokerURL, mgmt: ManagementClient) -> None:
    provisioned(vhost, _base())
    edited = _base(NEW_QUEUE).replace("max_priority: 5", "max_priority: 10")
    with pytest.raises(TopologyConflict) as caught:
        provision(_config(vhost, edited))
    message = str(caught.value)
    assert "queue 'billing': x-max-priority is 5 on the broker, 10 in app.yaml:8" in message
    assert mgmt.get_queue(vhost.vhost, "brand-new") is None  # all-or-nothing
    live = mgmt.get_queue(vhost.vhost, "billing")
    assert live is not None and live["arguments"]["x-max-priority"] == 5


def test_exchange_type_change_is_a_conflict(vhost: BrokerURL) -> None:
    provisioned(vhost, _base())
    the_plan = plan(_config(vhost, _base().replace("{name: tasks, type: topic}", "{name: tasks, type: direct}")))
    [conflict] = the_plan.conflicts
    assert conflict.describe() == "exchange 'tasks': type is 'topic' on the broker, 'direct' in app.yaml:4"


def test_prune_deletes_only_what_the_yaml_no_longer_declares(
    vhost: BrokerURL, mgmt: ManagementClient, channel: Any
) -> None:
    provisioned(vhost, _base())
    channel.exchange_declare("stale-exchange", "fanout", durable=True)
    channel.queue_declare("stale-queue", durable=True)
    channel.queue_bind("billing", "amq.topic", "legacy.#")  # a binding from a built-in exchange is never pruned
    channel.queue_bind("billing", "tasks", "stale.key")
    the_plan = plan(_config(vhost, _base()), prune=True)
    deletions = {f"{c.kind} {c.name}" for c in the_plan.by_action("delete")}
    assert deletions == {"exchange stale-exchange", "queue stale-queue", "binding tasks -> queue billing [stale.key]"}

    provision(_config(vhost, _base()), prune=True)
    names = {q["name"] for q in mgmt.list_queues(vhost.vhost)}
    exchanges = {e["name"] for e in mgmt.list_exchanges(vhost.vhost)}
    assert names == {"billing", "billing.dlq"}
    assert "stale-exchange" not in exchanges
    assert {"", "amq.topic", "amq.direct", "amq.fanout", "amq.headers"} <= exchanges
    assert not plan(_config(vhost, _base()), prune=True).has_changes


def test_prune_never_touches_another_connections_exclusive_queue(vhost: BrokerURL, channel: Any) -> None:
    provisioned(vhost, _base())
    exclusive = channel.queue_declare("", exclusive=True).method.queue
    the_plan = plan(_config(vhost, _base()), prune=True)
    assert exclusive not in {c.name for c in the_plan.changes}


def test_amqp_probing_finds_the_same_objects_and_conflicts_without_creating_anything(
    vhost: BrokerURL, mgmt: ManagementClient
) -> None:
    provisioned(vhost, _base())
    edited = _base(NEW_QUEUE).replace("max_priority: 5", "max_priority: 7")
    probed = plan(_config(vhost, edited, probe=True))
    via_http = plan(_config(vhost, edited))
    assert probed.source == "AMQP probe" and via_http.source == "management API"
    objects = {k: v for k, v in _actions(probed).items() if not k.startswith("binding")}
    assert objects == {k: v for k, v in _actions(via_http).items() if not k.startswith("binding")}
    [conflict] = probed.conflicts
    assert (
        str(conflict.differences[0]) == "x-max-priority is 5 on the broker, 7 in app.yaml:9"
    )  # line 1 is the broker section
    assert mgmt.get_queue(vhost.vhost, "brand-new") is None


def test_probing_reports_bindings_it_cannot_see_as_ensure(vhost: BrokerURL) -> None:
    provisioned(vhost, _base())
    probed = plan(_config(vhost, _base(), probe=True))
    assert {c.action for c in probed.changes if c.kind == "binding"} == {"ensure"}
    assert not probed.has_changes


def test_exchange_to_exchange_bindings_are_created_downstream_first() -> None:
    config = load_config_text(
        """
topology:
  exchanges: [{name: a, type: topic}, {name: b, type: topic}, {name: c, type: topic}]
  queues: [{name: sink, bindings: [{exchange: c, routing_key: "#"}]}]
  bindings:
    - {exchange: a, to_exchange: b, routing_key: "#"}
    - {exchange: b, to_exchange: c, routing_key: "#"}
""",
        "app.yaml",
    )
    order = [(b.source, b.destination) for b in desired(config.topology).bindings]
    assert order == [("c", "sink"), ("b", "c"), ("a", "b")]


def test_provisioned_classic_queue_matches_a_plain_pika_declaration(vhost: BrokerURL, channel: Any) -> None:
    # A queue declared by a worker without x-queue-type must count as the same classic queue.
    channel.queue_declare("plain", durable=True)
    the_plan = plan(_config(vhost, "topology:\n  queues: [{name: plain}]\n"))
    assert _actions(the_plan) == {"queue plain": "unchanged"}


def test_unroutable_publish_to_provisioned_exchange_is_returned(vhost: BrokerURL, channel: Any) -> None:
    provisioned(vhost, _base())
    channel.confirm_delivery()
    with pytest.raises(pika.exceptions.UnroutableError):
        channel.basic_publish("tasks", "nobody.listens", b"x", mandatory=True)


def test_prune_keeps_the_failure_records_stream(vhost: BrokerURL, channel: Any) -> None:
    from amqptasks.constants import FAILURES_QUEUE, FAILURES_QUEUE_ARGUMENTS

    provisioned(vhost, _base())
    channel.queue_declare(FAILURES_QUEUE, durable=True, arguments=dict(FAILURES_QUEUE_ARGUMENTS))
    deletions = {c.name for c in plan(_config(vhost, _base()), prune=True).by_action("delete")}
    assert FAILURES_QUEUE not in deletions
