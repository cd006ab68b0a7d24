"""Broker-side delays on a real RabbitMQ: arrival times, targets of every kind, unroutable messages, re-delays.

No worker runs: the tests publish with the raw pika channel through :func:`amqptasks.delays.route` and watch the
target queues. Timing cases are published together and then polled together, so the file takes as long as its
longest delay, not the sum of them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions
import pytest

from amqptasks.broker import BrokerURL, ManagementClient
from amqptasks.config import load_config_text
from amqptasks.config.versions import RabbitMQVersion
from amqptasks.constants import UNROUTABLE_EXCHANGE
from amqptasks.delays import route
from amqptasks.topology import plan, provision
from tests.topology_helpers import drain, provisioned

pytestmark = pytest.mark.broker

YAML = """
delays:
  enabled: true
topology:
  exchanges:
    - {name: events, type: topic}
    - {name: tasks, type: direct}
    - {name: reports, type: headers}
    - {name: broadcast, type: fanout}
  queues:
    - {name: invoices, max_priority: 10, bindings: [{exchange: events, routing_key: "billing.#"}]}
    - {name: orders, max_priority: 10, bindings: [{exchange: tasks, routing_key: orders}]}
    - name: eu-pdf
      bindings: [{exchange: reports, match: all, headers: {format: pdf, region: eu}}]
    - {name: mail, bindings: [{exchange: broadcast}]}
    - {name: inbox}
    - {name: short, bindings: [{exchange: tasks, routing_key: short}]}
    - {name: many-bits, bindings: [{exchange: tasks, routing_key: many-bits}]}
    - {name: replicated, type: quorum, bindings: [{exchange: tasks, routing_key: replicated}]}
    - {name: audit, type: stream, bindings: [{exchange: tasks, routing_key: audit}]}
    - {name: scratch}
"""


@dataclass(frozen=True)
class Case:
    """One delayed message: where it is published to, what it carries, where it must arrive and how late."""

    name: str
    delay_ms: int
    target: Mapping[str, str]
    routing_key: str
    queue: str
    headers: Mapping[str, Any] = field(default_factory=dict)
    priority: int = 5

    @property
    def allowed_lateness_ms(self) -> float:
        return 120 if self.delay_ms == 2000 else 100 + self.delay_ms / 100


TIMING = [
    Case("topic", 2000, {"exchange": "events"}, "billing.invoice.created", "invoices", {"tenant": "acme"}, 7),
    Case("direct", 2000, {"exchange": "tasks"}, "orders", "orders", {"tenant": "acme"}, 9),
    Case("headers", 2000, {"exchange": "reports"}, "report.eu", "eu-pdf", {"format": "pdf", "region": "eu"}, 3),
    Case("fanout", 2000, {"exchange": "broadcast"}, "anything", "mail", {"tenant": "acme"}),
    Case("queue= (default exchange)", 2000, {"queue": "inbox"}, "inbox", "inbox", {"tenant": "acme"}, 1),
    Case("short", 150, {"exchange": "tasks"}, "short", "short"),
    Case("many set bits", 2**12 - 1, {"exchange": "tasks"}, "many-bits", "many-bits"),
]


def publish(channel: Any, case: Case, *, headers: Mapping[str, Any] | None = None) -> float:
    """Publish *case* delayed (confirmed, mandatory); returns the monotonic time just before publishing."""
    delayed = route(case.delay_ms, **case.target, headers=case.headers if headers is None else headers)
    props = pika.BasicProperties(headers=delayed.headers, priority=case.priority, delivery_mode=2)
    started = time.monotonic()
    channel.basic_publish(delayed.exchange, case.routing_key, case.name.encode(), props, mandatory=True)
    return started


def wait_for(channel: Any, queue: str, timeout_s: float) -> tuple[float, Any, Any, bytes] | None:
    """The first message in *queue* and when it was seen, polling every 5 ms; None after *timeout_s*."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        method, props, body = channel.basic_get(queue, auto_ack=True)
        if method is not None:
            return time.monotonic(), method, props, body
        time.sleep(0.005)
    return None


def x_death_queues(props: Any) -> list[str]:
    return [str(death["queue"]) for death in (props.headers or {}).get("x-death", [])]


def test_delayed_messages_arrive_on_time_with_routing_key_headers_and_priority_intact(
    vhost: BrokerURL, channel: Any
) -> None:
    # Given the tiers and a target of every kind; all messages in flight at once
    provisioned(vhost, YAML)
    channel.confirm_delivery()
    published = {case.name: publish(channel, case) for case in TIMING}

    # When the target queues are polled every ~5 ms
    pending = {case.queue: case for case in TIMING}
    arrived: dict[str, tuple[float, Any, Any, bytes]] = {}
    end = time.monotonic() + max(c.delay_ms for c in TIMING) / 1000 + 2
    while pending and time.monotonic() < end:
        for queue, case in list(pending.items()):
            method, props, body = channel.basic_get(queue, auto_ack=True)
            if method is not None:
                arrived[case.name] = (time.monotonic(), method, props, body)
                del pending[queue]
        time.sleep(0.005)

    # Then each arrives once, never before its delay and at most a little after it, as if just published
    assert not pending, f"never arrived: {sorted(c.name for c in pending.values())}"
    for case in TIMING:
        seen, method, props, body = arrived[case.name]
        late_ms = (seen - published[case.name]) * 1000 - case.delay_ms
        print(f"delay {case.name}: {case.delay_ms} ms, arrived {late_ms:+.1f} ms late")
        assert late_ms >= 0, f"{case.name}: arrived {-late_ms:.1f} ms early"
        assert late_ms <= case.allowed_lateness_ms, f"{case.name}: {late_ms:.1f} ms late"
        assert (body, method.routing_key, props.priority, props.delivery_mode) == (
            case.name.encode(),
            case.routing_key,
            case.priority,
            2,
        )
        assert {k: props.headers.get(k) for k in case.headers} == dict(case.headers)
        assert props.expiration is None
        assert x_death_queues(props)  # it did wait in the tiers
        # A consumer sees the exchange the last tier dead-lettered to, not the one the message was meant for.
        assert method.exchange.startswith("amqptasks.delay.")
    assert all(drain(channel, case.queue) == [] for case in TIMING)  # no duplicates


def test_a_quorum_queue_receives_a_delayed_message(vhost: BrokerURL, channel: Any) -> None:
    provisioned(vhost, YAML)
    channel.confirm_delivery()
    case = Case("to quorum", 300, {"exchange": "tasks"}, "replicated", "replicated")

    started = publish(channel, case)
    arrival = wait_for(channel, "replicated", 3)

    assert arrival is not None
    seen, method, _, body = arrival
    assert (body, method.routing_key) == (b"to quorum", "replicated")
    assert seen - started >= 0.3


def test_a_delayed_message_for_a_stream_by_name_is_kept_in_amqptasks_unroutable(vhost: BrokerURL, channel: Any) -> None:
    # The exit is not bound to streams (see below), so the message is kept where it can be seen and replayed.
    provisioned(vhost, YAML)
    channel.confirm_delivery()
    publish(channel, Case("for a stream", 100, {"queue": "audit"}, "audit", "audit"))

    arrival = wait_for(channel, UNROUTABLE_EXCHANGE, 3)

    assert arrival is not None
    _, method, props, body = arrival
    assert (body, method.routing_key, props.headers["amqptasks.target"]) == (b"for a stream", "audit", "queue:audit")


def test_a_delayed_message_an_exchange_routes_to_a_stream_is_dropped_by_rabbitmq_3_and_stored_by_4(
    vhost: BrokerURL, channel: Any, broker_version: RabbitMQVersion
) -> None:
    """A broker limitation, pinned per version: validate warns about it unless it knows the broker is 4.0+.

    A delayed message leaves the last tier by dead-lettering, and RabbitMQ 3.10's stream queue type ignores the
    "stateless" deliveries dead-lettering makes (rabbit_stream_queue:deliver/2). Routed straight away (no delay,
    no dead-lettering) the same message does arrive. RabbitMQ 4.0 stores dead-lettered messages in streams.
    """
    provisioned(vhost, YAML)
    channel.confirm_delivery()
    publish(channel, Case("delayed", 100, {"exchange": "tasks"}, "audit", "audit"))
    channel.basic_publish("tasks", "audit", b"immediate")
    time.sleep(0.5)

    channel.basic_qos(prefetch_count=10)  # streams are read by consumers with a prefetch, not basic.get
    received = []
    for method, _, body in channel.consume("audit", arguments={"x-stream-offset": "first"}, inactivity_timeout=1):
        if method is None:
            break
        channel.basic_ack(method.delivery_tag)
        received.append(body)
    channel.cancel()

    if broker_version.dead_letters_into_streams:
        assert sorted(received) == [b"delayed", b"immediate"]
    else:
        assert received == [b"immediate"]
    assert drain(channel, UNROUTABLE_EXCHANGE) == []  # routed (to the stream), so not kept either


def test_a_delayed_message_nothing_matches_when_due_is_kept_in_amqptasks_unroutable(
    vhost: BrokerURL, channel: Any
) -> None:
    # Given a routing key no binding of 'events' matches
    provisioned(vhost, YAML)
    channel.confirm_delivery()
    case = Case("nobody listens", 100, {"exchange": "events"}, "nobody.listens.here", "-")

    # When it falls due (publishing it was not a return: it went into the tiers)
    publish(channel, case)
    arrival = wait_for(channel, UNROUTABLE_EXCHANGE, 3)

    # Then it waits in amqptasks.unroutable with its own routing key and target
    assert arrival is not None
    _, method, props, body = arrival
    assert (body, method.routing_key) == (b"nobody listens", "nobody.listens.here")
    assert props.headers["amqptasks.target"] == "exchange:events"


def test_a_delayed_message_whose_queue_was_deleted_before_it_fell_due_is_kept_in_amqptasks_unroutable(
    vhost: BrokerURL, channel: Any
) -> None:
    provisioned(vhost, YAML)
    channel.confirm_delivery()
    publish(channel, Case("orphan", 300, {"queue": "scratch"}, "scratch", "scratch"))

    channel.queue_delete("scratch")
    arrival = wait_for(channel, UNROUTABLE_EXCHANGE, 3)

    assert arrival is not None
    _, method, props, body = arrival
    assert (body, method.routing_key, props.headers["amqptasks.target"]) == (b"orphan", "scratch", "queue:scratch")


@pytest.mark.parametrize(
    ("exchange", "routing_key", "headers"),
    [
        ("events", "nobody.listens.here", None),
        ("tasks", "no-such-key", None),
        ("reports", "", {"format": "csv"}),
    ],
)
def test_an_immediate_mandatory_publish_that_matches_nothing_is_still_returned(
    vhost: BrokerURL, channel: Any, mgmt: ManagementClient, exchange: str, routing_key: str, headers: Any
) -> None:
    # Given an exchange that now has amqptasks.unroutable as its alternate exchange
    provisioned(vhost, YAML)
    arguments = {e["name"]: e["arguments"] for e in mgmt.list_exchanges(vhost.vhost)}
    assert arguments[exchange] == {"alternate-exchange": UNROUTABLE_EXCHANGE}
    channel.confirm_delivery()

    # When a message no binding matches is published now, mandatory
    with pytest.raises(pika.exceptions.UnroutableError):
        channel.basic_publish(exchange, routing_key, b"now", pika.BasicProperties(headers=headers), mandatory=True)

    # Then it came back to the publisher (the alternate exchange keeps only delayed messages); without
    # mandatory it is dropped as before
    channel.basic_publish(exchange, routing_key, b"now", pika.BasicProperties(headers=headers))
    assert drain(channel, UNROUTABLE_EXCHANGE) == []


def test_a_delivered_delayed_message_can_be_delayed_again_because_route_strips_its_x_death(
    vhost: BrokerURL, channel: Any
) -> None:
    # Given a delayed message delivered with the x-death history of its trip through the tiers
    provisioned(vhost, YAML)
    channel.confirm_delivery()
    case = Case("again", 100, {"queue": "inbox"}, "inbox", "inbox", {"id": "task-1"})
    publish(channel, case)
    first = wait_for(channel, "inbox", 3)
    assert first is not None
    headers = first[2].headers
    assert sorted(x_death_queues(first[2])) == ["amqptasks.delay.2", "amqptasks.delay.5", "amqptasks.delay.6"]

    # When it is delayed again with its own headers, through route()
    publish(channel, case, headers=headers)
    second = wait_for(channel, "inbox", 3)

    # Then it arrives again, with only this trip in its history
    assert second is not None
    assert second[2].headers["id"] == "task-1"
    assert all(death["count"] == 1 for death in second[2].headers["x-death"])


def test_republishing_a_delayed_message_with_its_x_death_loses_it_on_rabbitmq_3(
    vhost: BrokerURL, channel: Any, broker_version: RabbitMQVersion
) -> None:
    # Why route() strips x-death: RabbitMQ 3.x drops a message dead-lettered into a queue its history shows it
    # expired from before (a "cycle", Celery #9867) -- silently, not even into the alternate exchange.
    # RabbitMQ 4.0 keeps the death history inside the broker and ignores an x-death header a client sends, so
    # the same message arrives there.
    provisioned(vhost, YAML)
    channel.confirm_delivery()
    case = Case("cycle", 100, {"queue": "inbox"}, "inbox", "inbox")
    publish(channel, case)
    first = wait_for(channel, "inbox", 3)
    assert first is not None

    delayed = route(100, queue="inbox")
    kept_history = {**first[2].headers, **delayed.headers}  # what a naive re-delay would send
    channel.basic_publish(delayed.exchange, "inbox", b"cycle", pika.BasicProperties(headers=kept_history))

    if broker_version.major >= 4:
        again = wait_for(channel, "inbox", 3)
        assert again is not None and again[3] == b"cycle"
    else:
        assert wait_for(channel, "inbox", 0.6) is None
    assert drain(channel, UNROUTABLE_EXCHANGE) == []


def test_provisioning_with_delays_twice_leaves_nothing_to_change(vhost: BrokerURL) -> None:
    config = provisioned(vhost, YAML)

    _, again = provision(config)

    assert again.done == []
    the_plan = plan(config)
    assert not the_plan.has_changes, [c.describe() for c in the_plan.changes if c.action != "unchanged"]


def test_enabling_delays_on_exchanges_declared_without_them_is_a_conflict_pointing_at_the_delays_section(
    vhost: BrokerURL,
) -> None:
    # RabbitMQ cannot add an alternate exchange to an existing exchange: redeclaring it differently fails.
    without = YAML.replace("enabled: true", "enabled: false")
    provisioned(vhost, without)
    config = load_config_text(YAML, "app.yaml", broker_url=vhost.to_url())

    conflicts = plan(config).conflicts

    assert {c.name for c in conflicts} == {"events", "tasks", "reports", "broadcast"}
    [difference] = conflicts[0].differences
    assert (difference.name, difference.broker_value, difference.config_value) == (
        "alternate-exchange",
        None,
        UNROUTABLE_EXCHANGE,
    )
    assert difference.where is not None and (difference.where.file, difference.where.line) == ("app.yaml", 3)
