"""SyncPublisher against a real RabbitMQ, each test in its own vhost."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pika
import pika.exceptions
import pytest

from amqptasks import errors
from amqptasks.broker import BrokerURL, ManagementClient
from amqptasks.broker.rabbitmq import blocking as sync_module
from amqptasks.broker.rabbitmq.pipeline import ConfirmChannel
from amqptasks.config.model import Broker
from amqptasks.message.envelope import Envelope
from amqptasks.publish import RetryPolicy, SyncPublisher

QUEUE = "work"
TOPIC = "tasks"


@pytest.fixture
def topology(channel: Any) -> Any:
    """A durable queue ``work`` (priorities up to 10), bound to the topic exchange ``tasks`` with ``work.*``."""
    channel.queue_declare(QUEUE, durable=True, arguments={"x-max-priority": 10})
    channel.exchange_declare(TOPIC, "topic", durable=True)
    channel.queue_bind(QUEUE, TOPIC, "work.*")
    return channel


@pytest.fixture
def publisher(vhost: BrokerURL) -> Iterator[SyncPublisher]:
    name = f"amqptasks-test-publisher-{uuid.uuid4().hex[:8]}"
    with SyncPublisher(Broker(url=vhost.to_url(), connection_name=name)) as publisher:
        yield publisher


def task(routing_key: str = QUEUE, exchange: str = "", n: int = 0, **fields: Any) -> Envelope:
    return Envelope(exchange, routing_key, f"[[{n}], {{}}, {{}}]".encode(), correlation_id=f"task-{n}", **fields)


def count(channel: Any, queue: str = QUEUE) -> int:
    return int(channel.queue_declare(queue, passive=True).method.message_count)


def drain(channel: Any, queue: str = QUEUE) -> list[Any]:
    """Every message's properties, consuming the queue until it stays empty for half a second."""
    found = []
    for method, properties, _body in channel.consume(queue, auto_ack=True, inactivity_timeout=0.5):
        if method is None:
            break
        found.append(properties)
    channel.cancel()
    return found


def connections_named(mgmt: ManagementClient, name: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Our connections as the management API lists them (its stats lag by about a second)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [
            c for c in mgmt.list_connections() if (c.get("client_properties") or {}).get("connection_name") == name
        ]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_confirmed_publish_lands_with_every_property_and_header_intact(publisher: SyncPublisher, topology: Any) -> None:
    # Given a message using every property an Envelope carries
    headers = {"task": "billing.charge", "id": "abc", "retries": 2, "timelimit": [None, 30], "nested": {"a": True}}
    envelope = Envelope(
        TOPIC,
        "work.charge",
        b"[[1, 2], {}, {}]",
        headers=headers,
        content_type="application/json",
        content_encoding="utf-8",
        correlation_id="abc",
        reply_to="replies",
        priority=7,
        expiration=60000,
    )

    # When it is published
    publisher.publish(envelope)

    # Then the queue holds it, byte for byte and property for property
    method, properties, body = topology.basic_get(QUEUE, auto_ack=True)
    assert method.exchange == TOPIC and method.routing_key == "work.charge"
    assert body == b"[[1, 2], {}, {}]"
    assert properties.headers == headers
    assert properties.content_type == "application/json"
    assert properties.content_encoding == "utf-8"
    assert properties.correlation_id == "abc"
    assert properties.reply_to == "replies"
    assert properties.priority == 7
    assert properties.expiration == "60000"
    assert properties.delivery_mode == 2
    assert count(topology) == 0


def test_unroutable_message_raises_naming_exchange_and_key_and_nothing_is_delivered(
    publisher: SyncPublisher, topology: Any
) -> None:
    # Given a topic exchange whose only binding is work.*
    # When a mandatory message matches no binding
    with pytest.raises(errors.UnroutableError) as caught:
        publisher.publish(task("billing.charge", exchange=TOPIC))

    # Then the error names the exchange and the routing key, and no queue got the message
    assert caught.value.exchange == TOPIC and caught.value.routing_key == "billing.charge"
    assert "'tasks'" in str(caught.value) and "'billing.charge'" in str(caught.value)
    assert isinstance(caught.value, errors.PublishError)
    assert count(topology) == 0


def test_publishing_to_a_missing_exchange_raises_a_clear_error_and_the_publisher_keeps_working(
    publisher: SyncPublisher, topology: Any
) -> None:
    # When a message goes to an exchange that does not exist
    with pytest.raises(errors.PublishError) as caught:
        publisher.publish(task("work.x", exchange="no-such-exchange"))

    # Then the error says what the broker said, with a hint
    message = str(caught.value)
    assert "404" in message and "no exchange 'no-such-exchange'" in message
    assert "amqptasks topology apply" in message

    # And the next publish on the same publisher works
    publisher.publish(task())
    assert count(topology) == 1


def test_message_that_cannot_be_encoded_raises_publish_error_and_the_publisher_keeps_working(
    publisher: SyncPublisher, topology: Any
) -> None:
    # When a header holds a value AMQP tables cannot carry
    with pytest.raises(errors.PublishError, match="a header value of type set cannot go in an AMQP table"):
        publisher.publish(task(headers={"tags": {"a", "b"}}))

    # Then nothing was sent, and the next publish works
    publisher.publish(task())
    assert count(topology) == 1


def test_nacked_message_raises_publish_nacked(publisher: SyncPublisher, channel: Any) -> None:
    # Given a queue that holds one message and refuses more (reject-publish nacks the publisher)
    channel.queue_declare("full", durable=True, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    publisher.publish(task("full", n=1))

    # When another message is published to it
    with pytest.raises(errors.PublishNacked) as caught:
        publisher.publish(task("full", n=2))

    # Then the publish fails and only the first message is there
    assert "basic.nack" in str(caught.value) and "reject-publish" in str(caught.value)
    assert count(channel, "full") == 1


def test_eight_threads_publishing_concurrently_deliver_every_message(publisher: SyncPublisher, topology: Any) -> None:
    # Given 8 threads sharing one publisher
    failures: list[BaseException] = []
    start = threading.Barrier(8)

    def work(thread: int) -> None:
        try:
            start.wait()
            for n in range(200):
                publisher.publish(task(n=thread * 1000 + n))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]

    # When each publishes 200 messages at the same time
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    # Then there was no error and all 1,600 messages are in the queue
    assert failures == []
    assert count(topology) == 1600


def test_connection_closed_by_the_broker_between_publishes_is_reopened_and_nothing_is_lost(
    publisher: SyncPublisher, topology: Any, mgmt: ManagementClient, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a publisher whose connection the broker knows by name
    caplog.set_level(logging.INFO, logger="amqptasks.publish")
    publisher.publish(task(n=1))
    [connection] = connections_named(mgmt, publisher.connection_name)

    # When the broker closes it (as an operator or a broker restart would)
    mgmt.close_connection(connection["name"], "test: kill the publisher's connection")
    time.sleep(0.3)

    # Then the next publish reconnects and succeeds, and the queue holds both messages
    publisher.publish(task(n=2))
    assert count(topology) == 2
    connects = [r for r in caplog.records if r.getMessage().startswith("publisher connected")]
    assert len(connects) == 2
    assert any("CONNECTION_FORCED" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_unreachable_broker_fails_after_max_retries_with_the_policys_sleeps(
    broker: BrokerURL, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a broker URL whose port refuses connections (and a password that must never be shown)
    refusing = BrokerURL.parse(f"amqp://guest:Sup3r-Secret@{broker.host}:1/%2F")
    policy = RetryPolicy(max_retries=3, interval_start=0.1, interval_step=0.1, interval_max=0.2)
    publisher = SyncPublisher(Broker(url=refusing.to_url()), retry_policy=policy)
    caplog.set_level(logging.WARNING, logger="amqptasks.publish")

    # When a message is published
    started = time.monotonic()
    with pytest.raises(errors.PublishConnectionError) as caught:
        publisher.publish(task())
    elapsed = time.monotonic() - started

    # Then it gave up after 3 retries, having slept 0.1 + 0.2 + 0.2 s, without showing the password
    message = str(caught.value)
    assert "gave up after 3 retries" in message and "connection refused" in message
    assert "amqp://guest:****@" in message and "Sup3r-Secret" not in message
    assert 0.5 <= elapsed < 3.0
    assert len([r for r in caplog.records if "retry" in r.getMessage()]) == 3
    assert all("Sup3r-Secret" not in r.getMessage() for r in caplog.records)
    assert isinstance(caught.value, errors.ConnectionError)  # also catchable as a connection problem


def test_no_retry_policy_fails_at_once(broker: BrokerURL) -> None:
    publisher = SyncPublisher(Broker(url=f"amqp://guest:guest@{broker.host}:1/%2F"))

    with pytest.raises(errors.PublishConnectionError, match="gave up after 0 retries"):
        publisher.publish(task(), retry_policy=RetryPolicy(max_retries=0))


def test_publish_many_delivers_ten_thousand_confirmed_messages(publisher: SyncPublisher, topology: Any) -> None:
    # When 10,000 messages are published as one batch
    started = time.perf_counter()
    publisher.publish_many(task(n=n) for n in range(10_000))
    elapsed = time.perf_counter() - started

    # Then every one is in the queue, in order
    assert count(topology) == 10_000
    first = [topology.basic_get(QUEUE, auto_ack=True)[1].correlation_id for _ in range(3)]
    assert first == ["task-0", "task-1", "task-2"]
    print(f"publish_many: {10_000 / elapsed:,.0f} confirmed msgs/s")


def test_connection_lost_in_the_middle_of_a_batch_is_reopened_and_no_message_is_lost(
    publisher: SyncPublisher, topology: Any, mgmt: ManagementClient, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a publisher whose connection the broker knows by name
    caplog.set_level(logging.WARNING, logger="amqptasks.publish")
    publisher.publish(task(n=-1))
    [connection] = connections_named(mgmt, publisher.connection_name)

    def batch() -> Iterator[Envelope]:
        for n in range(10_000):
            if n == 4_000:  # the broker kills the connection while earlier messages are still unconfirmed
                mgmt.close_connection(connection["name"], "test: kill the publisher's connection mid-batch")
            yield task(n=n)

    # When the broker closes it while a batch is being published
    publisher.publish_many(batch())

    # Then the batch completes: every message is in the queue (unconfirmed ones were sent again, so some may be
    # there twice -- consumers must tolerate duplicates)
    assert {properties.correlation_id for properties in drain(topology)} == {f"task-{n}" for n in range(-1, 10_000)}
    assert any("CONNECTION_FORCED" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_publish_many_with_an_unroutable_message_in_the_middle_names_it_and_delivers_the_rest(
    publisher: SyncPublisher, topology: Any
) -> None:
    # Given a batch of 10,000 where message #5000 matches no binding
    batch = [task("work.x", exchange=TOPIC, n=n) for n in range(10_000)]
    batch[5000] = task("billing.lost", exchange=TOPIC, n=5000)

    # When it is published
    with pytest.raises(errors.BatchUnroutableError) as caught:
        publisher.publish_many(batch)

    # Then the error names that message, and every other message was confirmed and delivered
    error = caught.value
    assert (error.position, error.exchange, error.routing_key) == (5000, TOPIC, "billing.lost")
    assert error.positions == (5000,) and error.confirmed == 9_999 and error.total == 10_000
    assert "message #5000 of 10000" in str(error) and "9999 of the 10000 messages were confirmed" in str(error)
    assert isinstance(error, errors.UnroutableError)
    assert count(topology) == 9_999


def test_publish_many_reports_every_nacked_message(publisher: SyncPublisher, channel: Any) -> None:
    # Given a queue that takes 3 messages and refuses the rest
    channel.queue_declare("small", durable=True, arguments={"x-max-length": 3, "x-overflow": "reject-publish"})

    # When 5 are published as a batch
    with pytest.raises(errors.PublishNacked) as caught:
        publisher.publish_many(task("small", n=n) for n in range(5))

    # Then the last two are reported refused, and the queue holds the first three
    assert caught.value.positions == (3, 4) and caught.value.confirmed == 3
    assert count(channel, "small") == 3


def test_publish_many_to_a_missing_exchange_raises_and_the_publisher_keeps_working(
    publisher: SyncPublisher, topology: Any
) -> None:
    batch = [task(n=0), task("k", exchange="no-such-exchange", n=1), task(n=2)]

    with pytest.raises(errors.PublishError, match="no exchange 'no-such-exchange'"):
        publisher.publish_many(batch)

    publisher.publish_many([task(n=3)])
    assert count(topology) >= 2  # #0 (before the failure) and #3; #2 may or may not have been sent


def test_a_long_batch_to_a_missing_exchange_says_so_and_is_not_retried_as_a_lost_connection(
    publisher: SyncPublisher, topology: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a batch long enough that the broker's channel.close arrives while later messages are still being sent
    batch = [task(n=n) for n in range(5000)]
    batch[0] = task("k", exchange="no-such-exchange", n=0)

    # When it is published, Then the error is the broker's, with the hint, and no reconnect was attempted
    caplog.set_level(logging.WARNING, logger="amqptasks.publish")
    with pytest.raises(errors.PublishError, match=r"no exchange 'no-such-exchange'.*declare it first"):
        publisher.publish_many(batch)
    assert not [r for r in caplog.records if "retry" in r.getMessage()]
    publisher.publish_many([task(n=5000)])  # and the publisher still works


def test_publish_many_rejects_items_that_are_not_envelopes(publisher: SyncPublisher, topology: Any) -> None:
    with pytest.raises(errors.BatchInterrupted, match="stopped at item #1: TypeError: item #1 is a str") as caught:
        publisher.publish_many([task(n=0), "oops", task(n=2)])  # type: ignore[list-item]

    # The message before the bad item was still confirmed; nothing after it was taken
    assert isinstance(caught.value.__cause__, TypeError) and caught.value.confirmed == 1
    assert count(topology) == 1


def test_publish_many_from_a_failing_generator_reports_the_failures_before_it(
    publisher: SyncPublisher, topology: Any
) -> None:
    # Given a generator that yields a good message, an unroutable one, then fails
    def batch() -> Iterator[Envelope]:
        yield task(n=0)
        yield task("work.x", exchange="no-binding-here", n=1)
        raise ValueError("the database cursor went away")

    topology.exchange_declare("no-binding-here", "topic", durable=True)

    # When it is published
    with pytest.raises(errors.BatchInterrupted) as caught:
        publisher.publish_many(batch())

    # Then the error says where it stopped and why, and reports the unroutable message sent before it
    error = caught.value
    assert error.position == 2 and error.confirmed == 1 and isinstance(error.__cause__, ValueError)
    assert isinstance(error.failed, errors.BatchUnroutableError) and error.failed.positions == (1,)
    assert "ValueError: the database cursor went away" in str(error) and "unroutable" in str(error)
    assert count(topology) == 1


def test_publish_many_of_large_messages_delivers_them_all(publisher: SyncPublisher, topology: Any) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB
    publisher.publish_many(Envelope("", QUEUE, body, correlation_id=str(n)) for n in range(24))

    assert count(topology) == 24
    assert topology.basic_get(QUEUE, auto_ack=True)[2] == body


def test_publisher_without_confirms_still_sends_everything(vhost: BrokerURL, topology: Any) -> None:
    # Given a publisher that does not wait for confirms (fire and forget)
    with SyncPublisher(Broker(url=vhost.to_url()), confirm=False) as publisher:
        # When it publishes a batch and a single message
        publisher.publish_many(task(n=n) for n in range(1000))
        publisher.publish(task(n=1000))

    # Then the broker gets them all (no confirm says when: poll)
    deadline = time.monotonic() + 5
    while count(topology) < 1001 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert count(topology) == 1001


def test_publish_many_of_nothing_does_nothing(publisher: SyncPublisher, topology: Any) -> None:
    publisher.publish_many([])
    assert count(topology) == 0


def test_publisher_connection_carries_its_name_and_heartbeat(
    vhost: BrokerURL, topology: Any, mgmt: ManagementClient
) -> None:
    # Given a YAML broker section naming the connection and a heartbeat
    broker = Broker(url=vhost.to_url(), heartbeat=17, connection_name=f"billing-api-{uuid.uuid4().hex[:6]}")

    # When a publisher has published
    with SyncPublisher(broker) as publisher:
        publisher.publish(task())

        # Then the management API shows the connection under that name, with that heartbeat
        [connection] = connections_named(mgmt, broker.connection_name or "")
        assert connection["timeout"] == 17
        assert connection["vhost"] == vhost.vhost


def test_blocked_connection_timeout_reaches_pika(vhost: BrokerURL, monkeypatch: pytest.MonkeyPatch) -> None:
    # A real resource alarm (rabbitmqctl set_vm_memory_high_watermark 0) would block every client of this shared
    # broker; testing it for real needs a broker node of its own. Here: the setting reaches pika's connection.
    opened: list[pika.BlockingConnection] = []
    real_open = sync_module.open_blocking

    def spy(*args: Any, **kwargs: Any) -> pika.BlockingConnection:
        connection = real_open(*args, **kwargs)
        opened.append(connection)
        return connection

    monkeypatch.setattr(sync_module, "open_blocking", spy)
    with SyncPublisher(Broker(url=vhost.to_url()), blocked_connection_timeout=7.5) as publisher:
        publisher.publish(task("nowhere", mandatory=False))

    assert [c._impl.params.blocked_connection_timeout for c in opened] == [7.5]


def test_blocked_connection_timeout_becomes_publish_timeout_saying_why(
    publisher: SyncPublisher, topology: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given pika gives up on a connection the broker keeps blocked (simulated: see the test above)
    def blocked(self: ConfirmChannel, *args: Any) -> None:
        raise pika.exceptions.ConnectionBlockedTimeout()

    monkeypatch.setattr(ConfirmChannel, "send", blocked)

    # When a message is published, then the error says the broker blocks publishers, and why
    with pytest.raises(errors.PublishTimeout, match="blocking publishers, probably because of a memory or disk alarm"):
        publisher.publish(task())


def test_confirm_timeout_raises_publish_timeout(vhost: BrokerURL, topology: Any) -> None:
    # Given a confirm timeout far shorter than a persistent message's confirm takes
    with SyncPublisher(Broker(url=vhost.to_url()), confirm_timeout=1e-6) as publisher:
        # When a message is published, then the publish does not wait for ever
        with pytest.raises(errors.PublishTimeout, match=r"no confirm for message task-0 .* within 1e-06 s"):
            publisher.publish(task())

        # And the publisher still works with a sane timeout afterwards
        publisher._confirm_timeout = None
        publisher.publish(task(n=1))


def test_closed_publisher_refuses_to_publish(vhost: BrokerURL) -> None:
    publisher = SyncPublisher(Broker(url=vhost.to_url()))
    publisher.close()

    with pytest.raises(errors.PublishError, match="is closed"):
        publisher.publish(task())


def test_close_closes_every_threads_connection(vhost: BrokerURL, topology: Any, mgmt: ManagementClient) -> None:
    # Given a publisher used from three threads
    name = f"amqptasks-test-close-{uuid.uuid4().hex[:6]}"
    publisher = SyncPublisher(Broker(url=vhost.to_url()), connection_name=name)
    gate = threading.Event()

    def work() -> None:
        publisher.publish(task())
        gate.wait(10)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while count(topology) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    links = set(publisher._links)
    assert len(links) == 3

    # When it is closed
    publisher.close()
    gate.set()
    for thread in threads:
        thread.join()

    # Then none of its connections is left open
    assert all(not link.connection.is_open for link in links)
    time.sleep(1.5)  # the management API's connection list lags
    assert connections_named(mgmt, name, timeout=0) == []


def test_repr_never_shows_the_password() -> None:
    publisher = SyncPublisher(Broker(url="amqp://app:Sup3r-Secret@rabbit.example:5672/prod"))
    assert "Sup3r-Secret" not in repr(publisher) and "****" in repr(publisher)
