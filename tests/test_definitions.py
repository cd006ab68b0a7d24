from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from amqptasks.broker import BrokerURL, ManagementClient
from amqptasks.config import load_config_text
from amqptasks.config.versions import RabbitMQVersion
from amqptasks.topology.definitions import to_definitions
from amqptasks.topology.desired import BindingDecl, DesiredTopology, desired


def test_definitions_hold_the_vhost_exchanges_queues_and_bindings_of_the_topology() -> None:
    # Given a topic exchange and a dead-lettered priority queue bound to it
    config = load_config_text(
        """
topology:
  exchanges: [{name: orders, type: topic}]
  queues:
    - name: orders.new
      max_priority: 5
      dead_letter: auto
      bindings: [{exchange: orders, routing_key: order.created}]
"""
    )

    # When they are exported for vhost "shop"
    result = to_definitions(desired(config.topology), "shop", rabbitmq_version="3.10.8")

    # Then the document is exactly what RabbitMQ's definitions import expects, every object in "shop"
    assert result.warnings == ()
    assert result.document == {
        "rabbit_version": "3.10.8",
        "rabbitmq_version": "3.10.8",
        "vhosts": [{"name": "shop"}],
        "exchanges": [
            {
                "name": "orders",
                "vhost": "shop",
                "type": "topic",
                "durable": True,
                "auto_delete": False,
                "internal": False,
                "arguments": {},
            },
            {
                "name": "amqptasks.dlx",
                "vhost": "shop",
                "type": "direct",
                "durable": True,
                "auto_delete": False,
                "internal": False,
                "arguments": {},
            },
        ],
        "queues": [
            {
                "name": "orders.new",
                "vhost": "shop",
                "durable": True,
                "auto_delete": False,
                "arguments": {
                    "x-max-priority": 5,
                    "x-dead-letter-exchange": "amqptasks.dlx",
                    "x-dead-letter-routing-key": "orders.new",
                },
            },
            {"name": "orders.new.dlq", "vhost": "shop", "durable": True, "auto_delete": False, "arguments": {}},
        ],
        "bindings": [
            {
                "source": "amqptasks.dlx",
                "vhost": "shop",
                "destination": "orders.new.dlq",
                "destination_type": "queue",
                "routing_key": "orders.new",
                "arguments": {},
            },
            {
                "source": "orders",
                "vhost": "shop",
                "destination": "orders.new",
                "destination_type": "queue",
                "routing_key": "order.created",
                "arguments": {},
            },
        ],
    }
    assert "users" not in result.document and "permissions" not in result.document
    json.dumps(result.document)  # ready to be written as JSON


def test_exclusive_queues_are_left_out_of_the_definitions_with_a_warning() -> None:
    # Given an exclusive queue bound to an exchange, next to an ordinary queue
    config = load_config_text(
        """
topology:
  exchanges: [{name: events, type: fanout}]
  queues:
    - {name: replies, exclusive: true, bindings: [{exchange: events}]}
    - {name: log, bindings: [{exchange: events}]}
"""
    )

    # When the topology is exported
    result = to_definitions(desired(config.topology), "v")

    # Then neither the exclusive queue nor its binding is in the document, and a warning says why
    assert [q["name"] for q in result.document["queues"]] == ["log"]
    assert [b["destination"] for b in result.document["bindings"]] == ["log"]
    [warning] = result.warnings
    assert "'replies' is exclusive" in warning
    assert result.document["rabbit_version"] == "3.10.0"


# -- round trip on the real broker ----------------------------------------------------------------------------

REALISTIC = """
topology:
  exchanges:
    - {name: orders, type: topic, alternate_exchange: orders.unroutable}
    - {name: orders.unroutable, type: fanout}
    - {name: billing, type: direct}
    - {name: reports, type: headers, durable: false}
    - {name: audit, type: fanout, internal: true}
  queues:
    - name: orders.new
      max_priority: 5
      message_ttl: 30s
      dead_letter: auto
      bindings:
        - {exchange: orders, routing_keys: ["order.*.created", "order.#"]}
    - name: invoices
      type: quorum
      delivery_limit: 3
      dead_letter: auto
      bindings: [{exchange: billing, routing_key: invoice}]
    - name: pdf-reports
      max_length: 1000
      overflow: reject-publish
      bindings: [{exchange: reports, match: all, headers: {format: pdf, pages: 2}}]
    - name: unroutable
      bindings: [{exchange: orders.unroutable}]
    - name: audit-log
      single_active_consumer: true
      bindings: [{exchange: audit}]
    - name: replies
      exclusive: true
      bindings: [{exchange: billing, routing_key: reply}]
  bindings:
    - {exchange: orders, to_exchange: audit, routing_key: "#"}
    - {exchange: billing, to_exchange: audit, routing_key: invoice}
"""


def binding_key(source: str, dest_type: str, dest: str, key: str, arguments: Any) -> tuple[str, ...]:
    return (source, dest_type, dest, key, json.dumps(arguments, sort_keys=True))


def desired_binding(b: BindingDecl) -> tuple[str, ...]:
    return binding_key(b.source, b.destination_type, b.destination, b.routing_key, dict(b.arguments))


@pytest.fixture
def world_readable_file() -> Iterator[Path]:
    """A file outside pytest's private tmp dir: rabbitmqctl reads it as the 'rabbitmq' user."""
    fd, name = tempfile.mkstemp(prefix="amqptasks-definitions-", suffix=".json")
    os.close(fd)
    path = Path(name)
    path.chmod(0o644)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


_NOT_OURS_TO_FIX = ("cookie", "eacces", "permission denied", "unable to perform an operation on node", "not allowed")


def import_definitions(path: Path, mgmt: ManagementClient, vhost: str, definitions: dict[str, Any]) -> None:
    """Import like an operator would, with rabbitmqctl; through the HTTP API when the CLI cannot reach the node.

    The fallback is reported as a warning in the test summary, so a run never hides which path it took.
    """
    path.write_text(json.dumps(definitions))
    if shutil.which("rabbitmqctl") is None:
        warnings.warn("rabbitmqctl is not on PATH: definitions imported through the management API", stacklevel=2)
        mgmt.import_definitions(vhost, definitions)
        return
    # An absolute path: the rabbitmqctl wrapper changes to /var/lib/rabbitmq before running.
    done = subprocess.run(
        ["rabbitmqctl", "import_definitions", str(path.resolve())], capture_output=True, text=True, timeout=60
    )
    output = done.stdout + done.stderr
    if done.returncode != 0 and any(marker in output.lower() for marker in _NOT_OURS_TO_FIX):
        warnings.warn(
            f"rabbitmqctl could not reach the node ({output.strip()[:200]}): "
            "definitions imported through the management API",
            stacklevel=2,
        )
        mgmt.import_definitions(vhost, definitions)
        return
    assert done.returncode == 0, f"rabbitmqctl import_definitions failed:\n{output}"


def names_in_default_vhost(mgmt: ManagementClient) -> set[str]:
    return {e["name"] for e in mgmt.list_exchanges("/")} | {q["name"] for q in mgmt.list_queues("/")}


@pytest.mark.broker
def test_exported_definitions_import_into_the_vhost_exactly_as_desired(
    vhost: BrokerURL, mgmt: ManagementClient, world_readable_file: Path, broker_version: RabbitMQVersion
) -> None:
    # Given a realistic topology exported for the test's own vhost
    topology: DesiredTopology = desired(load_config_text(REALISTIC).topology)
    result = to_definitions(topology, vhost.vhost, rabbitmq_version=mgmt.rabbitmq_version())
    before = names_in_default_vhost(mgmt)

    # When the definitions are imported into the broker
    import_definitions(world_readable_file, mgmt, vhost.vhost, result.document)

    # Then every exchange exists in the vhost with the same type, flags and arguments
    exchanges = {e["name"]: e for e in mgmt.list_exchanges(vhost.vhost)}
    for e in topology.exchanges:
        assert e.name in exchanges, f"exchange {e.name!r} missing"
        got = exchanges[e.name]
        assert (got["type"], got["durable"], got["auto_delete"], got["internal"], got["arguments"]) == (
            e.type,
            e.durable,
            e.auto_delete,
            e.internal,
            dict(e.arguments),
        ), e.name
    # And every queue but the exclusive one, with the same durability and x-arguments
    queues = {q["name"]: q for q in mgmt.list_queues(vhost.vhost)}
    for q in topology.queues:
        if q.exclusive:
            assert q.name not in queues
            continue
        assert q.name in queues, f"queue {q.name!r} missing"
        got = queues[q.name]
        assert (got["durable"], got["auto_delete"], got["exclusive"], got["arguments"]) == (
            q.durable,
            q.auto_delete,
            False,
            broker_version.listed_arguments(q.arguments),  # 4.0+ lists x-queue-type even when not declared
        ), q.name
        assert got["type"] == q.queue_type
    # And every binding, with the same routing key and arguments
    bindings = {
        binding_key(b["source"], b["destination_type"], b["destination"], b["routing_key"], b["arguments"])
        for b in mgmt.list_bindings(vhost.vhost)
    }
    for b in topology.bindings:
        if b.destination == "replies":
            assert desired_binding(b) not in bindings
        else:
            assert desired_binding(b) in bindings, b.describe()
    # And nothing landed in the default vhost
    assert not (names_in_default_vhost(mgmt) - before) & ({e.name for e in topology.exchanges} | set(queues))
