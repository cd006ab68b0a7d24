from __future__ import annotations

import dataclasses
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import pika.exceptions
import pytest

from amqptasks.broker import BrokerURL, ManagementClient, open_blocking
from amqptasks.config.versions import RabbitMQVersion
from amqptasks.errors import ManagementAPIError

pytestmark = pytest.mark.broker

T = TypeVar("T")


def eventually(probe: Callable[[], T | None], timeout: float = 10.0) -> T:
    """The first truthy result of ``probe``: the stats-backed endpoints (connections) lag behind the broker."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.2)


def names(items: list[dict[str, Any]]) -> set[str]:
    return {item["name"] for item in items}


def test_management_api_reports_the_rabbitmq_version(mgmt: ManagementClient) -> None:
    version = mgmt.rabbitmq_version()

    assert version[0].isdigit()
    assert mgmt.is_reachable()


def test_the_default_vhost_slash_is_addressed_as_percent_2f(mgmt: ManagementClient) -> None:
    assert "amq.direct" in names(mgmt.list_exchanges("/"))


def test_each_test_gets_a_fresh_vhost_where_the_user_may_declare(
    broker: BrokerURL, vhost: BrokerURL, mgmt: ManagementClient, channel: Any
) -> None:
    assert vhost.vhost.startswith("amqptasks-test-")
    assert vhost.vhost != broker.vhost
    assert names(mgmt.list_queues(vhost.vhost)) == set()

    channel.queue_declare("declared-by-guest", durable=True)  # never transient: RabbitMQ 4.3 refuses it

    assert mgmt.get_queue(vhost.vhost, "declared-by-guest") is not None


def test_a_queue_declared_in_one_vhost_is_invisible_in_another(
    broker: BrokerURL, vhost: BrokerURL, mgmt: ManagementClient, channel: Any
) -> None:
    other = f"amqptasks-test-{uuid.uuid4().hex[:8]}"
    mgmt.create_vhost(other)
    try:
        channel.queue_declare("only-here", durable=True)

        assert "only-here" in names(mgmt.list_queues(vhost.vhost))
        assert mgmt.list_queues(other) == []
        assert mgmt.get_queue(other, "only-here") is None
    finally:
        mgmt.delete_vhost(other)


def test_declared_queue_and_exchange_are_listed(
    vhost: BrokerURL, mgmt: ManagementClient, channel: Any, broker_version: RabbitMQVersion
) -> None:
    channel.exchange_declare("billing/events#1", exchange_type="topic", durable=True)
    channel.queue_declare("billing/invoices#1", durable=True, arguments={"x-max-priority": 5})
    channel.queue_bind("billing/invoices#1", "billing/events#1", routing_key="invoice.*")

    assert "billing/events#1" in names(mgmt.list_exchanges(vhost.vhost))
    assert "billing/invoices#1" in names(mgmt.list_queues(vhost.vhost))
    queue = mgmt.get_queue(vhost.vhost, "billing/invoices#1")
    assert queue is not None
    assert queue["durable"] is True
    assert queue["arguments"] == broker_version.listed_arguments({"x-max-priority": 5})
    bindings = [(b["source"], b["destination"], b["routing_key"]) for b in mgmt.list_bindings(vhost.vhost)]
    assert ("billing/events#1", "billing/invoices#1", "invoice.*") in bindings


def test_get_queue_of_a_missing_queue_is_none(vhost: BrokerURL, mgmt: ManagementClient) -> None:
    assert mgmt.get_queue(vhost.vhost, "no-such-queue") is None


def test_imported_definitions_create_a_queue_in_that_vhost(vhost: BrokerURL, mgmt: ManagementClient) -> None:
    definitions = {
        "queues": [{"name": "imported", "durable": True, "auto_delete": False, "arguments": {}}],
        "exchanges": [{"name": "imported.x", "type": "direct", "durable": True, "auto_delete": False, "arguments": {}}],
        "bindings": [
            {
                "source": "imported.x",
                "destination": "imported",
                "destination_type": "queue",
                "routing_key": "k",
                "arguments": {},
            }
        ],
    }

    mgmt.import_definitions(vhost.vhost, definitions)

    assert mgmt.get_queue(vhost.vhost, "imported") is not None
    exported = mgmt.export_definitions(vhost.vhost)
    assert [q["name"] for q in exported["queues"]] == ["imported"]
    assert {(b["source"], b["destination"]) for b in exported["bindings"]} == {("imported.x", "imported")}


def test_deleting_a_missing_vhost_is_not_an_error(mgmt: ManagementClient) -> None:
    mgmt.delete_vhost(f"amqptasks-test-never-created-{uuid.uuid4().hex[:8]}")


def test_api_error_carries_the_status_and_the_reason_but_not_the_password(mgmt: ManagementClient) -> None:
    with pytest.raises(ManagementAPIError) as caught:
        mgmt.list_queues(f"no-such-vhost-{uuid.uuid4().hex[:8]}")

    assert caught.value.status == 404
    message = str(caught.value)
    assert "GET http://" in message and "/api/queues/no-such-vhost-" in message
    assert "Not Found" in message
    assert mgmt._auth_header.split()[1] not in message


def test_wrong_password_is_a_401_whose_message_hides_the_password(broker: BrokerURL) -> None:
    secret = "wrong-" + uuid.uuid4().hex
    client = ManagementClient.for_broker(dataclasses.replace(broker, password=secret))

    with pytest.raises(ManagementAPIError) as caught:
        client.overview()

    assert caught.value.status == 401
    assert secret not in str(caught.value)
    assert "check the user and password" in str(caught.value)
    assert not client.is_reachable()


def test_credentials_in_the_management_url_win_over_the_broker_url(broker: BrokerURL) -> None:
    wrong_amqp = dataclasses.replace(broker, username="nobody", password="nothing")
    host = broker.management_url().split("://", 1)[1]

    client = ManagementClient.for_broker(wrong_amqp, f"http://{broker.username}:{broker.password}@{host}")

    assert client.is_reachable()
    assert "@" not in client.base_url  # credentials are kept out of the URL shown in errors


def test_unreachable_management_port_gives_an_error_with_the_plugin_hint() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = ManagementClient(f"http://127.0.0.1:{port}", "guest", "secret-pw", timeout=2)

    with pytest.raises(ManagementAPIError) as caught:
        client.overview()

    assert caught.value.status is None
    assert "connection refused" in str(caught.value)
    assert "rabbitmq-plugins enable rabbitmq_management" in str(caught.value)
    assert "secret-pw" not in str(caught.value)
    assert not client.is_reachable()


def test_a_named_connection_can_be_found_and_closed_from_the_broker_side(
    vhost: BrokerURL, mgmt: ManagementClient
) -> None:
    connection_name = f"amqptasks-close-me-{uuid.uuid4().hex[:8]}"
    connection = open_blocking(vhost, connection_name=connection_name)
    try:
        listed = eventually(
            lambda: [
                c
                for c in mgmt.list_connections()
                if c.get("client_properties", {}).get("connection_name") == connection_name
            ]
        )
        assert listed[0]["vhost"] == vhost.vhost

        mgmt.close_connection(listed[0]["name"], reason="test says bye")

        def closed() -> bool:
            connection.process_data_events(time_limit=0.1)
            return False

        with pytest.raises(pika.exceptions.ConnectionClosedByBroker, match="test says bye"):
            eventually(closed, timeout=5)
    finally:
        if connection.is_open:
            connection.close()
