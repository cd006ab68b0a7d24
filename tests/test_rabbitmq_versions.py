"""What depends on the broker's RabbitMQ version, through the CLI a user runs.

Each test asserts the behaviour of the version it runs against: ``python3 dev.py test`` runs them against the
local RabbitMQ (3.10) and against RabbitMQ 4.0 (tests/rabbitmq4.py).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from amqptasks.broker import BrokerURL, ManagementClient
from amqptasks.config import check_text, version_rules
from amqptasks.config.diagnostics import Diagnostics
from amqptasks.config.versions import RabbitMQVersion
from tests.cli_helpers import run, write
from tests.worker_helpers import Project, wait_until, worker_process

QUORUM_WITH_PRIORITY = """
topology:
  queues:
    - {name: urgent, type: quorum, max_priority: 5, delivery_limit: 3}
    - {name: orders, type: quorum}
"""


def test_max_priority_on_a_quorum_queue_is_refused_by_plan_on_3_and_applied_on_4(
    tmp_path: Path, vhost: BrokerURL, mgmt: ManagementClient, broker_version: RabbitMQVersion
) -> None:
    # Given a quorum queue with max_priority (validate cannot know the version: a warning)
    write(tmp_path, "app.yaml", QUORUM_WITH_PRIORITY)
    env = {"AMQPTASKS_BROKER_URL": vhost.to_url()}
    validated = run(["topology", "validate", "app.yaml"], cwd=tmp_path, env=env)
    assert validated.code == 0, str(validated)
    assert "quorum queues take message priorities only from RabbitMQ 4.0" in validated.stderr

    # When it is planned and applied against the broker
    planned = run(["topology", "plan", "app.yaml"], cwd=tmp_path, env=env)
    applied = run(["topology", "apply", "app.yaml"], cwd=tmp_path, env=env)

    if broker_version.quorum_priorities:
        # Then on 4.0+ both go through, and the queue carries no x-max-priority (4.0 refuses it on quorum queues)
        assert planned.code == 0, str(planned)
        as_json = run(["topology", "plan", "app.yaml", "--json"], cwd=tmp_path, env=env)
        assert as_json.json()["rabbitmq_version"] == str(broker_version)
        assert applied.code == 0, str(applied)
        urgent = mgmt.get_queue(vhost.vhost, "urgent")
        assert urgent is not None
        assert urgent["arguments"] == {"x-queue-type": "quorum", "x-delivery-limit": 3}
        again = run(["topology", "plan", "app.yaml", "--detailed-exitcode"], cwd=tmp_path, env=env)
        assert again.code == 0, str(again)
    else:
        # Then on 3.x both refuse it before declaring anything, naming the version
        for result in (planned, applied):
            assert result.code != 0, str(result)
            assert "error: app.yaml:3:50: " in result.stderr, str(result)
            assert f"quorum queues have no message priorities on RabbitMQ {broker_version}" in result.stderr
        assert mgmt.list_queues(vhost.vhost) == []


def test_plan_says_what_a_quorum_queue_without_delivery_limit_does_on_this_version(
    tmp_path: Path, vhost: BrokerURL, broker_version: RabbitMQVersion
) -> None:
    write(tmp_path, "app.yaml", "topology:\n  queues:\n    - {name: orders, type: quorum}\n")

    planned = run(["topology", "plan", "app.yaml"], cwd=tmp_path, env={"AMQPTASKS_BROKER_URL": vhost.to_url()})

    assert planned.code == 0, str(planned)
    notes = [line for line in planned.stdout.splitlines() if line.startswith("note: quorum queue 'orders'")]
    if broker_version.quorum_default_delivery_limit is not None:
        assert notes and "applies its default of 20" in notes[0], planned.stdout
    else:
        assert notes and "without limit" in notes[0], planned.stdout


TASKS = """
@app.task(name="v.noop")
def noop():
    record(ran=True)
"""

QUORUM_AND_CLASSIC = """
topology:
  queues:
    - {name: default, type: quorum, dead_letter: auto}
    - {name: classic, dead_letter: auto}
"""


def test_a_worker_uses_per_consumer_prefetch_never_global_qos(
    tmp_path: Path, vhost: BrokerURL, mgmt: ManagementClient
) -> None:
    """Global QoS is unsupported on quorum queues and rejected by RabbitMQ 4.3: every channel of a worker
    consuming a quorum and a classic queue has a per-consumer prefetch and no global one."""
    project = Project.create(tmp_path, vhost, TASKS, QUORUM_AND_CLASSIC)
    applied = run(["topology", "apply", "app.yaml"], cwd=tmp_path, env=project.env)
    assert applied.code == 0, str(applied)

    with worker_process(project, "-Q", "default,classic"):
        project.app().send_task("v.noop")
        wait_until(lambda: project.records() != [], timeout=15, what="the task to run")
        wait_until(lambda: len(consuming_channels(mgmt, vhost)) > 0, timeout=15, what="the stats of its channels")
        channels = consuming_channels(mgmt, vhost)

    assert all(c.get("global_prefetch_count", 0) == 0 for c in channels), channels
    assert any(c.get("prefetch_count", 0) > 0 for c in channels), channels  # the task consumers


def consuming_channels(mgmt: ManagementClient, vhost: BrokerURL) -> list[dict[str, object]]:
    return [c for c in mgmt.list_channels(vhost.vhost) if c.get("consumer_count", 0)]


# --- the rules themselves, for each version (pure) ------------------------------------------------------------

RULES_YAML = """
delays: {enabled: true}
topology:
  exchanges: [{name: tasks}]
  queues:
    - {name: urgent, type: quorum, max_priority: 5}
    - {name: scratch, durable: false}
    - {name: audit, type: stream, bindings: [{exchange: tasks, routing_key: audit}]}
"""


@pytest.mark.parametrize(
    ("version", "errors", "warnings"),
    [
        (None, [], ["urgent: max_priority", "scratch: durable", "audit: delayed"]),
        ("3.10.8", ["urgent: max_priority"], ["scratch: durable", "audit: delayed"]),
        ("4.0.5", [], ["scratch: durable"]),
        ("4.3.0", ["scratch: durable"], []),
    ],
)
def test_what_each_version_refuses_is_an_error_and_what_it_may_refuse_a_warning(
    version: str | None, errors: list[str], warnings: list[str]
) -> None:
    config, _ = check_text(RULES_YAML, "app.yaml", env={})
    assert config is not None
    diags = Diagnostics()

    version_rules.check(config, diags, RabbitMQVersion.parse(version))

    def short(items: list[Any]) -> list[str]:  # "queue 'scratch': durable: false ..." -> "scratch: durable"
        return sorted(": ".join(re.match(r"queue '([^']+)': (\w+)", d.message).groups()) for d in items)  # type: ignore[union-attr]

    assert short(diags.errors) == sorted(errors)
    assert short(diags.warnings) == sorted(warnings)


def test_versions_parse_from_server_properties_and_compare() -> None:
    assert RabbitMQVersion.parse(b"4.0.5") == RabbitMQVersion(4, 0, 5)
    assert RabbitMQVersion.parse("4.1.0-rc.1") == RabbitMQVersion(4, 1, 0)
    assert RabbitMQVersion.parse("3.10") == RabbitMQVersion(3, 10)
    assert RabbitMQVersion.parse("unknown") is None and RabbitMQVersion.parse(None) is None
    assert RabbitMQVersion(3, 13) < RabbitMQVersion(4, 0) < RabbitMQVersion(4, 3)
    assert RabbitMQVersion(4, 0).quorum_default_delivery_limit == 20
    assert RabbitMQVersion(3, 10).quorum_default_delivery_limit is None
