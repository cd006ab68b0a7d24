"""``amqptasks send``: publish a task by name from the shell, as a user would."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from amqptasks.broker import BrokerURL
from tests.cli_helpers import run, write
from tests.topology_helpers import drain

YAML = """
delays: {enabled: true}
topology:
  provision: true
  exchanges: [{name: tasks, type: topic}]
  queues:
    - {name: billing, max_priority: 10, bindings: [{exchange: tasks, routing_key: "billing.#"}]}
routes:
  - {task: "billing.*", exchange: tasks, routing_key: billing.charge}
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    write(tmp_path, "app.yaml", YAML)
    return tmp_path


def send(project: Path, vhost: BrokerURL, *args: str) -> Any:
    return run(["send", "billing.charge", "app.yaml", "--broker", vhost.to_url(), *args], cwd=project)


def test_send_prints_the_task_id_of_the_confirmed_message(project: Path, vhost: BrokerURL, channel: Any) -> None:
    result = send(project, vhost, "--args", '["acme", 42]', "--kwargs", '{"vip": true}', "--priority", "7")
    assert result.code == 0, str(result)
    [(method, props, body)] = drain(channel, "billing")
    assert result.stdout.strip() == props.correlation_id
    assert (method.routing_key, props.priority) == ("billing.charge", 7)
    assert json.loads(body)[:2] == [["acme", 42], {"vip": True}]


def test_send_with_headers_and_routing_key(project: Path, vhost: BrokerURL, channel: Any) -> None:
    result = send(project, vhost, "--routing-key", "billing.vip", "--header", "tenant=acme", "--expires", "60")
    assert result.code == 0, str(result)
    [(method, props, _)] = drain(channel, "billing")
    assert method.routing_key == "billing.vip"
    assert props.headers["tenant"] == "acme" and props.headers["expires"]


def test_invalid_json_is_a_usage_error_naming_the_option(project: Path, vhost: BrokerURL) -> None:
    result = send(project, vhost, "--args", "[1, 2")
    assert result.code == 2
    assert "Invalid value for --args: not valid JSON" in result.stderr


def test_kwargs_must_be_an_object(project: Path, vhost: BrokerURL) -> None:
    result = send(project, vhost, "--kwargs", "[1]")
    assert result.code == 2 and "must be a JSON object" in result.stderr


def test_unroutable_task_is_a_usage_error_with_the_exchange_and_key(project: Path, vhost: BrokerURL) -> None:
    result = send(project, vhost, "--routing-key", "nobody.listens")
    assert result.code == 2
    assert "'tasks' with routing key 'nobody.listens' is unroutable" in result.stderr


def test_bad_header_is_a_usage_error(project: Path, vhost: BrokerURL) -> None:
    result = send(project, vhost, "--header", "no-equals-sign")
    assert result.code == 2 and "is not key=value" in result.stderr
