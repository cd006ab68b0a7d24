"""Publishing tasks through the App on the real broker: what arrives is what the call asked for."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from amqptasks import App, UnroutableError, errors
from amqptasks.broker import BrokerURL, ManagementClient
from amqptasks.message.errors import EncodeError
from tests.topology_helpers import drain

TOPOLOGY = """
delays: {enabled: true}
topology:
  provision: true
  exchanges:
    - {name: tasks, type: topic}
    - {name: direct-tasks, type: direct}
    - {name: reports, type: headers}
  queues:
    - name: billing
      max_priority: 10
      bindings: [{exchange: tasks, routing_key: "billing.#"}, {exchange: direct-tasks, routing_key: billing}]
    - name: reports-pdf
      bindings: [{exchange: reports, match: all, headers: {format: pdf}}]
    - {name: emails}
routes:
  - {task: "billing.*", exchange: tasks, routing_key: billing.charge}
"""


@pytest.fixture
def app(vhost: BrokerURL, tmp_path: Path) -> Any:
    path = tmp_path / "app.yaml"
    path.write_text(textwrap.dedent(TOPOLOGY))
    application = App.from_config(path, broker_url=vhost.to_url())

    @application.task(name="billing.charge")
    def charge(customer: str, cents: int) -> None: ...

    @application.task(name="emails.send", queue="emails")
    def send(to: str) -> None: ...

    yield application
    application.close()


def one(channel: Any, queue: str) -> tuple[Any, Any, Any]:
    [(method, props, body)] = drain(channel, queue)
    return method, props, json.loads(body)


def test_delay_returns_after_the_message_is_on_the_broker(app: App, channel: Any) -> None:
    result = app.tasks["billing.charge"].delay("acme", 4200)
    method, props, body = one(channel, "billing")
    assert props.correlation_id == result.id == props.headers["id"]
    assert props.headers["task"] == "billing.charge"
    assert (method.exchange, method.routing_key) == ("tasks", "billing.charge")
    assert props.delivery_mode == 2 and props.content_type == "application/json"
    assert body[:2] == [["acme", 4200], {}]


def test_apply_async_options_arrive_as_headers_properties_and_body(app: App, channel: Any) -> None:
    link = app.tasks["emails.send"].s("ops@example.com")
    expires = datetime.now(UTC) + timedelta(hours=1)
    app.tasks["billing.charge"].apply_async(
        ("acme",),
        {"cents": 1},
        task_id="fixed-id",
        priority=7,
        routing_key="billing.vip",
        headers={"tenant": "acme", "x-death": ["must not travel"]},
        link=link,
        link_error=link,
        expires=expires,
        time_limit=30,
        soft_time_limit=20,
    )
    method, props, body = one(channel, "billing")
    assert method.routing_key == "billing.vip"
    assert (props.correlation_id, props.priority) == ("fixed-id", 7)
    headers = props.headers
    assert headers["tenant"] == "acme" and "x-death" not in headers
    assert headers["expires"] == expires.isoformat()
    assert headers["timelimit"] == [30, 20]  # Celery's order: [time_limit, soft_time_limit]
    assert props.expiration is None  # expiry is the worker's to check: an AMQP TTL would also hit delay tiers
    args, kwargs, embed = body
    assert (args, kwargs) == (["acme"], {"cents": 1})
    assert embed["callbacks"] == [dict(link)] and embed["errbacks"] == [dict(link)]


def test_queue_option_publishes_through_the_default_exchange(app: App, channel: Any) -> None:
    app.tasks["billing.charge"].apply_async(("acme", 1), queue="emails")
    method, _, _ = one(channel, "emails")
    assert (method.exchange, method.routing_key) == ("", "emails")


def test_exchange_option_overrides_the_route(app: App, channel: Any) -> None:
    app.tasks["billing.charge"].apply_async(("acme", 1), exchange="direct-tasks", routing_key="billing")
    method, _, _ = one(channel, "billing")
    assert method.exchange == "direct-tasks"


def test_send_task_publishes_by_name_without_the_function(app: App, channel: Any) -> None:
    result = app.send_task("billing.refund", ["acme"], {"cents": 5})
    method, props, body = one(channel, "billing")
    assert props.headers["task"] == "billing.refund" and props.correlation_id == result.id
    assert method.routing_key == "billing.charge"  # the "billing.*" route applies by name
    assert body[1] == {"cents": 5}


def test_unroutable_task_raises_and_nothing_is_reported_sent(app: App, channel: Any) -> None:
    with pytest.raises(UnroutableError, match=re.escape("'tasks' with routing key 'nobody.listens'")):
        app.tasks["billing.charge"].apply_async(("acme", 1), routing_key="nobody.listens")
    assert drain(channel, "billing") == []


def test_compressed_task_is_marked_and_smaller_on_the_broker(app: App, channel: Any) -> None:
    app.tasks["emails.send"].apply_async(("x" * 10_000,), compression="zlib")
    [(_, props, body)] = drain(channel, "emails")
    assert props.headers["compression"] == "application/x-gzip"
    assert len(body) < 500


def test_priority_to_a_queue_without_max_priority_warns_once(app: App, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="amqptasks"):
        app.tasks["emails.send"].apply_async(("a",), priority=5)
        app.tasks["emails.send"].apply_async(("b",), priority=5)
    warnings = [r.getMessage() for r in caplog.records if "no max_priority" in r.getMessage()]
    assert len(warnings) == 1 and "'emails'" in warnings[0]


def test_asyncio_publishing_lands_many_in_flight(app: App, channel: Any) -> None:
    async def main() -> list[str]:
        results = await asyncio.gather(*(app.tasks["emails.send"].adelay(f"u{i}") for i in range(200)))
        await app.aclose()
        return [r.id for r in results]

    ids = asyncio.run(main())
    arrived = [props.correlation_id for _, props, _ in drain(channel, "emails")]
    assert sorted(arrived) == sorted(ids) and len(set(ids)) == 200


def test_publish_many_confirms_every_message(app: App, mgmt: ManagementClient, vhost: BrokerURL, channel: Any) -> None:
    send = app.tasks["emails.send"]
    results = app.publish_many(send.s(f"user{i}") for i in range(2000))
    assert len({r.id for r in results}) == 2000
    assert channel.queue_declare("emails", passive=True).method.message_count == 2000


def test_a_body_over_the_configured_max_message_size_is_refused_before_sending(
    vhost: BrokerURL, tmp_path: Path, channel: Any
) -> None:
    # Given an app whose YAML caps message bodies at 1 KiB
    path = tmp_path / "app.yaml"
    path.write_text("broker: {max_message_size: 1KiB}\n" + textwrap.dedent(TOPOLOGY))
    with App.from_config(path, broker_url=vhost.to_url()) as app:
        send = app.task(name="emails.send", queue="emails")(lambda to: None)

        # When a task's body is bigger, Then the call raises, saying what to do, and nothing is sent
        with pytest.raises(EncodeError, match=r"message body is 2,0\d\d bytes, over the limit of 1,024"):
            send.delay("x" * 2000)
        assert channel.queue_declare("emails", passive=True).method.message_count == 0

        # And compressed, the same task fits and is sent
        send.apply_async(("x" * 2000,), compression="zlib")
    assert channel.queue_declare("emails", passive=True).method.message_count == 1


def test_publish_many_with_a_bad_signature_raises_naming_it_and_sends_nothing(app: App, channel: Any) -> None:
    # Given a batch whose signature #50 lacks an argument
    send = app.tasks["emails.send"]
    batch = [send.s(f"user{i}") for i in range(100)]
    batch[50] = send.s()

    # When it is published the default way, Then it raises the call's own error, naming the signature
    with pytest.raises(TypeError) as caught:
        app.publish_many(batch)
    assert "publish_many: raised for signature #50 (task 'emails.send')" in caught.value.__notes__

    # And nothing was sent: the batch can be fixed and published again without duplicates
    assert channel.queue_declare("emails", passive=True).method.message_count == 0


def test_publish_many_streamed_confirms_every_message_of_a_generator(app: App, channel: Any) -> None:
    send = app.tasks["emails.send"]
    results = app.publish_many((send.s(f"user{i}") for i in range(3000)), stream=True)

    arrived = [properties.correlation_id for _, properties, _ in drain(channel, "emails")]
    assert arrived == [result.id for result in results] and len(set(arrived)) == 3000


def test_publish_many_streamed_stops_at_a_bad_signature_after_settling_the_ones_before(app: App, channel: Any) -> None:
    # Given a streamed batch whose signature #50 cannot be serialized
    send = app.tasks["emails.send"]
    batch = [send.s(f"user{i}") for i in range(100)]
    batch[50] = send.s(object())

    # When it is published
    with pytest.raises(errors.BatchInterrupted) as caught:
        app.publish_many(batch, stream=True)

    # Then the error says where it stopped and why, and what became of the messages before it
    error = caught.value
    assert (error.position, error.confirmed, error.failed) == (50, 50, None)
    assert isinstance(error.__cause__, EncodeError) and "argument 1 (object) cannot be sent as json" in str(error)
    assert "stopped at item #50" in str(error) and "the 50 before it were sent and 50 of them confirmed" in str(error)
    # The first 50 are on the broker, with the results the caller needs to track them; nothing after #49 was sent
    arrived = [properties.correlation_id for _, properties, _ in drain(channel, "emails")]
    assert arrived == [result.id for result in error.results] and len(arrived) == 50

    # And the rest can be published by resuming after the bad one
    rest = app.publish_many(batch[error.position + 1 :], stream=True)
    assert len(rest) == 49 and channel.queue_declare("emails", passive=True).method.message_count == 49


@pytest.mark.parametrize(
    ("target", "queue", "routing_key", "headers"),
    [
        ({"exchange": "tasks", "routing_key": "billing.invoice.created"}, "billing", "billing.invoice.created", {}),
        ({"exchange": "direct-tasks", "routing_key": "billing"}, "billing", "billing", {}),
        ({"exchange": "reports", "headers": {"format": "pdf"}}, "reports-pdf", "billing.charge", {"format": "pdf"}),
        ({"queue": "emails"}, "emails", "emails", {}),
    ],
    ids=["topic", "direct", "headers", "queue"],
)
def test_countdown_task_appears_after_its_delay_with_no_worker_running(
    app: App, channel: Any, target: dict[str, Any], queue: str, routing_key: str, headers: dict[str, str]
) -> None:
    app.provision()  # as at a service's start; the stopwatch covers the publish only
    app.tasks["billing.charge"].delay("warm", 0)  # open the publisher's connection
    drain(channel, "billing")
    started = time.monotonic()
    app.tasks["billing.charge"].apply_async(("acme", 1), countdown=2, priority=3, **target)
    arrived = None
    while time.monotonic() - started < 3:
        method, props, _ = channel.basic_get(queue, auto_ack=True)
        if method is not None:
            arrived = time.monotonic() - started
            break
        time.sleep(0.005)
    assert arrived is not None, "never arrived"
    assert 2.0 <= arrived <= 2.12, f"arrived after {arrived:.3f} s"
    assert method.routing_key == routing_key
    assert props.priority == 3
    assert {k: props.headers[k] for k in headers} == headers
    assert props.headers["task"] == "billing.charge"
    assert props.headers["eta"] is not None


def test_provisions_the_topology_on_first_publish_when_the_yaml_asks(
    app: App, mgmt: ManagementClient, vhost: BrokerURL
) -> None:
    assert mgmt.get_queue(vhost.vhost, "emails") is None
    app.tasks["emails.send"].delay("a")
    assert mgmt.get_queue(vhost.vhost, "emails") is not None


def test_eta_in_the_future_goes_through_the_delay_tiers(app: App, channel: Any) -> None:
    app.provision()
    eta = datetime.now(UTC) + timedelta(milliseconds=600)
    app.tasks["emails.send"].apply_async(("later",), eta=eta)
    assert drain(channel, "emails") == []  # not before its eta
    time.sleep(0.8)
    [(_, props, _)] = drain(channel, "emails")
    assert props.headers["eta"] == eta.isoformat()


def test_mandatory_false_lets_an_unroutable_task_go_silently(app: App) -> None:
    # Opting out of mandatory is the caller's explicit choice; the default raises UnroutableError.
    app.tasks["billing.charge"].apply_async(("acme", 1), routing_key="nobody.listens", mandatory=False)


def test_msgpack_serializer_sets_the_content_type_and_round_trips(app: App, channel: Any) -> None:
    from amqptasks.tasks.dispatch import decode

    app.tasks["emails.send"].apply_async(("a@example.com",), serializer="msgpack")
    [(_, props, body)] = drain(channel, "emails")
    assert props.content_type == "application/x-msgpack"
    message = decode(body, props.headers, props.content_type, props.content_encoding)
    assert message.args == ("a@example.com",)


def test_unknown_retry_policy_key_is_refused_before_sending(app: App, channel: Any) -> None:
    with pytest.raises(ValueError, match="max_retry"):
        app.tasks["emails.send"].apply_async(("a",), retry_policy={"max_retry": 3})


def test_concurrent_first_async_publishes_share_one_connection(
    app: App, mgmt: ManagementClient, vhost: BrokerURL
) -> None:
    async def main() -> int:
        await asyncio.gather(*(app.tasks["emails.send"].adelay(f"u{i}") for i in range(50)))
        count = _connections_in(mgmt, vhost)  # the publisher is still open here
        await app.aclose()
        return count

    assert asyncio.run(main()) == 1


def _connections_in(mgmt: ManagementClient, vhost: BrokerURL, settle: float = 6.0) -> int:
    # The management API's connection list lags a few seconds behind the broker.
    deadline = time.monotonic() + settle
    count = 0
    while time.monotonic() < deadline:
        count = sum(1 for c in mgmt.list_connections() if c.get("vhost") == vhost.vhost)
        if count:
            break
        time.sleep(0.25)
    return count


def test_publish_many_splits_large_bodies_across_frames_intact(app: App, channel: Any) -> None:
    big = "é" * 200_000  # 400 kB of UTF-8: several body frames at the default frame_max of 128 KiB
    app.publish_many([app.tasks["emails.send"].s(big), app.tasks["emails.send"].s("small")])
    [(_, _, first), (_, _, second)] = drain(channel, "emails")
    assert json.loads(first)[0] == [big] and json.loads(second)[0] == ["small"]


def test_publish_signals_fire_around_the_confirmed_publish(app: App, channel: Any) -> None:
    seen: list[tuple[str, str]] = []
    app.signals.before_publish.connect(lambda signal, message, envelope: seen.append((signal, message.task)))
    app.signals.after_publish.connect(lambda signal, message, envelope: seen.append((signal, message.task)))

    def broken(**_: Any) -> None:
        raise RuntimeError("a receiver's bug")

    app.signals.after_publish.connect(broken)  # logged, never breaks publishing
    app.tasks["emails.send"].delay("a")
    assert seen == [("before_publish", "emails.send"), ("after_publish", "emails.send")]
    assert len(drain(channel, "emails")) == 1
