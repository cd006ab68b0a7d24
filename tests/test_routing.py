"""The provisioned topology routes messages the way the YAML says (real RabbitMQ, one vhost per test)."""

from __future__ import annotations

import time
from typing import Any

import pika

from amqptasks.broker import BrokerURL
from tests.topology_helpers import bodies, drain, provisioned

ALL_TYPES = """
topology:
  exchanges:
    - {name: orders, type: direct}
    - {name: events, type: topic}
    - {name: broadcast, type: fanout}
    - {name: reports, type: headers}
  queues:
    - name: billing
      bindings: [{exchange: orders, routing_key: billing}]
    - name: shipping
      bindings: [{exchange: orders, routing_keys: [shipping, billing]}]
    - name: eu-orders
      bindings: [{exchange: events, routing_key: "order.eu.*"}]
    - name: all-failures
      bindings: [{exchange: events, routing_key: "#.failed"}]
    - name: mail
      bindings: [{exchange: broadcast}]
    - name: sms
      bindings: [{exchange: broadcast}]
    - name: pdf-eu
      bindings: [{exchange: reports, match: all, headers: {format: pdf, region: eu}}]
    - name: pdf-or-eu
      bindings: [{exchange: reports, match: any, headers: {format: pdf, region: eu}}]
"""

QUEUES = ["billing", "shipping", "eu-orders", "all-failures", "mail", "sms", "pdf-eu", "pdf-or-eu"]


def _publish_and_collect(
    channel: Any, exchange: str, routing_key: str, headers: dict[str, str] | None = None
) -> set[str]:
    channel.confirm_delivery()
    channel.basic_publish(exchange, routing_key, b"m", pika.BasicProperties(headers=headers))
    return {q for q in QUEUES if drain(channel, q)}


def test_direct_exchange_routes_by_exact_key(vhost: BrokerURL, channel: Any) -> None:
    provisioned(vhost, ALL_TYPES)
    assert _publish_and_collect(channel, "orders", "billing") == {"billing", "shipping"}
    assert _publish_and_collect(channel, "orders", "shipping") == {"shipping"}
    assert _publish_and_collect(channel, "orders", "billing.extra") == set()


def test_topic_exchange_routes_by_pattern(vhost: BrokerURL, channel: Any) -> None:
    provisioned(vhost, ALL_TYPES)
    assert _publish_and_collect(channel, "events", "order.eu.created") == {"eu-orders"}
    assert _publish_and_collect(channel, "events", "order.eu.payment.failed") == {"all-failures"}
    assert _publish_and_collect(channel, "events", "order.eu.failed") == {"eu-orders", "all-failures"}
    assert _publish_and_collect(channel, "events", "order.us.created") == set()


def test_fanout_exchange_copies_to_every_bound_queue(vhost: BrokerURL, channel: Any) -> None:
    provisioned(vhost, ALL_TYPES)
    assert _publish_and_collect(channel, "broadcast", "ignored") == {"mail", "sms"}


def test_headers_exchange_matches_all_or_any(vhost: BrokerURL, channel: Any) -> None:
    provisioned(vhost, ALL_TYPES)
    assert _publish_and_collect(channel, "reports", "", {"format": "pdf", "region": "eu"}) == {"pdf-eu", "pdf-or-eu"}
    assert _publish_and_collect(channel, "reports", "", {"format": "pdf", "region": "us"}) == {"pdf-or-eu"}
    assert _publish_and_collect(channel, "reports", "", {"format": "csv", "region": "us"}) == set()


def test_exchange_to_exchange_binding_forwards_matching_messages(vhost: BrokerURL, channel: Any) -> None:
    provisioned(
        vhost,
        """
topology:
  exchanges:
    - {name: ingress, type: topic}
    - {name: billing-events, type: fanout}
  queues:
    - {name: ledger, bindings: [{exchange: billing-events}]}
  bindings:
    - {exchange: ingress, to_exchange: billing-events, routing_key: "billing.#"}
""",
    )
    channel.confirm_delivery()
    channel.basic_publish("ingress", "billing.invoice.paid", b"paid")
    channel.basic_publish("ingress", "shipping.sent", b"sent")
    assert bodies(channel, "ledger") == ["paid"]


def test_alternate_exchange_collects_unroutable_messages(vhost: BrokerURL, channel: Any) -> None:
    provisioned(
        vhost,
        """
topology:
  exchanges:
    - {name: unrouted, type: fanout}
    - {name: tasks, type: direct, alternate_exchange: unrouted}
  queues:
    - {name: known, bindings: [{exchange: tasks, routing_key: known}]}
    - {name: lost-and-found, bindings: [{exchange: unrouted}]}
""",
    )
    channel.confirm_delivery()
    channel.basic_publish("tasks", "known", b"a")
    channel.basic_publish("tasks", "nobody-listens", b"b")
    assert bodies(channel, "known") == ["a"]
    assert bodies(channel, "lost-and-found") == ["b"]


def test_rejected_message_is_dead_lettered_to_the_auto_dlq(vhost: BrokerURL, channel: Any) -> None:
    provisioned(
        vhost,
        """
topology:
  exchanges: [{name: tasks, type: direct}]
  queues:
    - {name: billing, dead_letter: auto, bindings: [{exchange: tasks, routing_key: billing.charge}]}
""",
    )
    channel.confirm_delivery()
    channel.basic_publish("tasks", "billing.charge", b"charge-42")
    method, _, _ = channel.basic_get("billing")
    channel.basic_reject(method.delivery_tag, requeue=False)

    [(dead_method, props, body)] = _wait_for(channel, "billing.dlq")
    assert body == b"charge-42"
    death = props.headers["x-death"][0]
    assert death["reason"] == "rejected"
    assert death["queue"] == "billing"
    assert death["exchange"] == "tasks"
    assert death["routing-keys"] == ["billing.charge"]
    assert dead_method.routing_key == "billing"  # the auto DLX routes by the source queue's name


def test_explicit_dead_letter_exchange_and_routing_key(vhost: BrokerURL, channel: Any) -> None:
    provisioned(
        vhost,
        """
topology:
  exchanges:
    - {name: tasks, type: direct}
    - {name: graveyard, type: topic}
  queues:
    - name: emails
      message_ttl: 50ms
      dead_letter: {exchange: graveyard, routing_key: dead.emails}
      bindings: [{exchange: tasks, routing_key: emails}]
    - {name: dead-emails, bindings: [{exchange: graveyard, routing_key: "dead.#"}]}
""",
    )
    channel.confirm_delivery()
    channel.basic_publish("tasks", "emails", b"welcome")
    [(method, props, body)] = _wait_for(channel, "dead-emails")
    assert body == b"welcome"
    assert method.routing_key == "dead.emails"
    assert props.headers["x-death"][0]["reason"] == "expired"


def test_priority_queue_serves_higher_priorities_first(vhost: BrokerURL, channel: Any) -> None:
    provisioned(vhost, "topology:\n  queues: [{name: urgent, max_priority: 10}]\n")
    channel.confirm_delivery()
    for priority in (1, 9, 5, 0, 10):
        channel.basic_publish("", "urgent", str(priority).encode(), pika.BasicProperties(priority=priority))
    assert bodies(channel, "urgent") == ["10", "9", "5", "1", "0"]


def test_quorum_queue_dead_letters_after_its_delivery_limit(vhost: BrokerURL, channel: Any) -> None:
    provisioned(vhost, "topology:\n  queues: [{name: payments, type: quorum, delivery_limit: 2, dead_letter: auto}]\n")
    channel.confirm_delivery()
    channel.basic_publish("", "payments", b"poison")
    deliveries = 0
    while deliveries < 10:
        method, _, _ = channel.basic_get("payments")
        if method is None:
            break
        deliveries += 1
        channel.basic_nack(method.delivery_tag, requeue=True)
    # delivery_limit 2: delivered, redelivered twice, then dead-lettered instead of a fourth delivery.
    assert deliveries == 3
    [(_, props, body)] = _wait_for(channel, "payments.dlq")
    assert body == b"poison"
    assert props.headers["x-death"][0]["reason"] == "delivery_limit"


def _wait_for(channel: Any, queue: str, timeout: float = 5.0) -> list[tuple[Any, Any, bytes]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        messages = drain(channel, queue)
        if messages:
            return messages
        time.sleep(0.05)
    return []
