"""AsyncPublisher against a real RabbitMQ, each test in its own vhost (asyncio.run inside plain tests)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from amqptasks import errors
from amqptasks.broker import BrokerURL, ManagementClient
from amqptasks.config.model import Broker
from amqptasks.message.envelope import Envelope
from amqptasks.publish import AsyncPublisher, RetryPolicy

QUEUE = "work"
TOPIC = "tasks"

T = TypeVar("T")


@pytest.fixture
def topology(channel: Any) -> Any:
    """A durable queue ``work`` (priorities up to 10), bound to the topic exchange ``tasks`` with ``work.*``."""
    channel.queue_declare(QUEUE, durable=True, arguments={"x-max-priority": 10})
    channel.exchange_declare(TOPIC, "topic", durable=True)
    channel.queue_bind(QUEUE, TOPIC, "work.*")
    return channel


@pytest.fixture
def broker_config(vhost: BrokerURL) -> Broker:
    return Broker(url=vhost.to_url(), connection_name=f"amqptasks-test-async-{uuid.uuid4().hex[:8]}")


def with_publisher(config: Broker, body: Callable[[AsyncPublisher], Awaitable[T]], **options: Any) -> T:
    """Run ``body`` with a connected publisher on a fresh event loop (pytest-asyncio is not available)."""

    async def main() -> T:
        async with AsyncPublisher(config, **options) as publisher:
            return await body(publisher)

    return asyncio.run(main())


def task(routing_key: str = QUEUE, exchange: str = "", n: int = 0, **fields: Any) -> Envelope:
    return Envelope(exchange, routing_key, f"[[{n}], {{}}, {{}}]".encode(), correlation_id=f"task-{n}", **fields)


def count(channel: Any, queue: str = QUEUE) -> int:
    return int(channel.queue_declare(queue, passive=True).method.message_count)


def connections_named(mgmt: ManagementClient, name: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        found = [
            c for c in mgmt.list_connections() if (c.get("client_properties") or {}).get("connection_name") == name
        ]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_confirmed_publish_lands_with_every_property_and_header_intact(broker_config: Broker, topology: Any) -> None:
    # Given a message using every property an Envelope carries
    headers = {"task": "billing.charge", "id": "abc", "retries": 2, "timelimit": [None, 30], "nested": {"a": True}}
    envelope = Envelope(
        TOPIC,
        "work.charge",
        b"[[1, 2], {}, {}]",
        headers=headers,
        correlation_id="abc",
        reply_to="replies",
        priority=7,
        expiration=60000,
    )

    # When it is published and confirmed
    with_publisher(broker_config, lambda p: p.publish(envelope))

    # Then the queue holds it, byte for byte and property for property
    method, properties, body = topology.basic_get(QUEUE, auto_ack=True)
    assert method.exchange == TOPIC and method.routing_key == "work.charge"
    assert body == b"[[1, 2], {}, {}]"
    assert properties.headers == headers
    assert (properties.content_type, properties.content_encoding) == ("application/json", "utf-8")
    assert (properties.correlation_id, properties.reply_to) == ("abc", "replies")
    assert (properties.priority, properties.expiration, properties.delivery_mode) == (7, "60000", 2)


def test_unroutable_message_raises_naming_exchange_and_key_and_nothing_is_delivered(
    broker_config: Broker, topology: Any
) -> None:
    # When a mandatory message matches no binding of the topic exchange
    with pytest.raises(errors.UnroutableError) as caught:
        with_publisher(broker_config, lambda p: p.publish(task("billing.charge", exchange=TOPIC)))

    # Then the error names the exchange and the routing key, and no queue got it
    assert (caught.value.exchange, caught.value.routing_key) == (TOPIC, "billing.charge")
    assert count(topology) == 0


def test_nacked_message_raises_publish_nacked(broker_config: Broker, channel: Any) -> None:
    # Given a queue that holds one message and refuses more
    channel.queue_declare("full", durable=True, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})

    async def body(publisher: AsyncPublisher) -> None:
        await publisher.publish(task("full", n=1))
        # When another message is published to it, then the broker's nack fails the publish
        with pytest.raises(errors.PublishNacked, match=r"basic\.nack"):
            await publisher.publish(task("full", n=2))

    with_publisher(broker_config, body)
    assert count(channel, "full") == 1


def test_publishing_to_a_missing_exchange_raises_a_clear_error_and_the_publisher_keeps_working(
    broker_config: Broker, topology: Any
) -> None:
    async def body(publisher: AsyncPublisher) -> None:
        # When a message goes to an exchange that does not exist, then the error says what the broker said
        with pytest.raises(errors.PublishError, match="NOT_FOUND - no exchange 'no-such-exchange'"):
            await publisher.publish(task("work.x", exchange="no-such-exchange"))
        # And the next publish works (aio-pika reopened the channel the broker closed)
        await publisher.publish(task())

    with_publisher(broker_config, body)
    assert count(topology) == 1


def test_message_that_cannot_be_encoded_raises_publish_error_and_the_publisher_keeps_working(
    broker_config: Broker, topology: Any
) -> None:
    async def body(publisher: AsyncPublisher) -> None:
        with pytest.raises(errors.PublishError, match=r"cannot send message task-0 .*set"):
            await publisher.publish(task(headers={"tags": {"a", "b"}}))
        await publisher.publish(task())

    with_publisher(broker_config, body)
    assert count(topology) == 1


def test_thousand_concurrent_publishes_all_land(broker_config: Broker, topology: Any) -> None:
    # When 1,000 publishes run concurrently on one publisher
    async def body(publisher: AsyncPublisher) -> float:
        started = time.perf_counter()
        await asyncio.gather(*(publisher.publish(task(n=n)) for n in range(1000)))
        return time.perf_counter() - started

    elapsed = with_publisher(broker_config, body)

    # Then every one was confirmed and is in the queue
    assert count(topology) == 1000
    assert elapsed < 10
    print(f"async gather: {1000 / elapsed:,.0f} confirmed msgs/s")


def test_concurrent_publishes_fail_only_for_their_own_unroutable_message(broker_config: Broker, topology: Any) -> None:
    # Given 100 concurrent publishes, one of which matches no binding
    envelopes = [task("work.x", exchange=TOPIC, n=n) for n in range(100)]
    envelopes[42] = task("billing.lost", exchange=TOPIC, n=42)

    async def body(publisher: AsyncPublisher) -> list[BaseException | None]:
        return await asyncio.gather(*(publisher.publish(e) for e in envelopes), return_exceptions=True)

    # When they run, then exactly that one failed, and the 99 others landed
    results = with_publisher(broker_config, body)
    failed = {n: r for n, r in enumerate(results) if r is not None}
    assert list(failed) == [42] and isinstance(failed[42], errors.UnroutableError)
    assert count(topology) == 99


def test_connection_closed_by_the_broker_is_restored_and_the_next_publish_succeeds(
    broker_config: Broker, topology: Any, mgmt: ManagementClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)

    async def body(publisher: AsyncPublisher) -> None:
        # Given a publisher whose connection the broker knows by name
        await publisher.publish(task(n=1))
        [connection] = await asyncio.to_thread(connections_named, mgmt, publisher.connection_name)

        # When the broker closes it
        await asyncio.to_thread(mgmt.close_connection, connection["name"], "test: kill the publisher's connection")
        await asyncio.sleep(0.1)

        # Then the next publish waits for the robust connection to come back, and succeeds
        await publisher.publish(task(n=2))

    with_publisher(broker_config, body, reconnect_interval=0.2)
    assert count(topology) == 2
    assert any("CONNECTION_FORCED" in r.getMessage() for r in caplog.records)


def test_publishes_in_flight_when_the_connection_dies_are_sent_again_after_the_reconnect(
    broker_config: Broker, topology: Any, mgmt: ManagementClient
) -> None:
    async def body(publisher: AsyncPublisher) -> list[BaseException | None]:
        # Given a publisher whose connection the broker knows by name
        await publisher.publish(task(n=-1))
        [connection] = await asyncio.to_thread(connections_named, mgmt, publisher.connection_name)

        async def kill_soon() -> None:
            await asyncio.sleep(0.05)
            await asyncio.to_thread(mgmt.close_connection, connection["name"], "test: kill mid-flight")

        # When the broker closes it while 3,000 publishes are in flight
        killer = asyncio.create_task(kill_soon())
        results = await asyncio.gather(*(publisher.publish(task(n=n)) for n in range(3000)), return_exceptions=True)
        await killer
        return results

    results = with_publisher(broker_config, body, reconnect_interval=0.2)

    # Then every publish succeeded, and every message is in the queue (some perhaps twice)
    assert [r for r in results if r is not None] == []
    ids = set()
    for method, properties, _body in topology.consume(QUEUE, auto_ack=True, inactivity_timeout=0.5):
        if method is None:
            break
        ids.add(properties.correlation_id)
    assert ids == {f"task-{n}" for n in range(-1, 3000)}


def test_unreachable_broker_fails_after_max_retries_without_showing_the_password(broker: BrokerURL) -> None:
    # Given a broker URL whose port refuses connections
    config = Broker(url=f"amqp://guest:Sup3r-Secret@{broker.host}:1/%2F")
    policy = RetryPolicy(max_retries=2, interval_start=0.1, interval_step=0.1, interval_max=0.2)

    async def main() -> None:
        publisher = AsyncPublisher(config, retry_policy=policy)
        try:
            await publisher.publish(task())
        finally:
            await publisher.close()

    # When a message is published, then it gives up after the policy's retries and sleeps
    started = time.monotonic()
    with pytest.raises(errors.PublishConnectionError) as caught:
        asyncio.run(main())
    elapsed = time.monotonic() - started
    assert "gave up after 2 retries" in str(caught.value)
    assert "Sup3r-Secret" not in str(caught.value) and "guest:****@" in str(caught.value)
    assert 0.3 <= elapsed < 3


def test_connect_to_an_unreachable_broker_raises_connection_error(broker: BrokerURL) -> None:
    async def main() -> None:
        await AsyncPublisher(Broker(url=f"amqp://guest:guest@{broker.host}:1/%2F")).connect()

    with pytest.raises(errors.ConnectionError, match="cannot connect to amqp://guest:\\*\\*\\*\\*@"):
        asyncio.run(main())


def test_confirm_timeout_raises_publish_timeout(broker_config: Broker, topology: Any) -> None:
    async def body(publisher: AsyncPublisher) -> None:
        with pytest.raises(errors.PublishTimeout, match="memory or disk alarm"):
            await publisher.publish(task())

    # Given a confirm timeout far shorter than a persistent message's confirm takes
    with_publisher(broker_config, body, confirm_timeout=1e-6)


def test_publisher_connection_carries_its_name(broker_config: Broker, topology: Any, mgmt: ManagementClient) -> None:
    async def body(publisher: AsyncPublisher) -> list[dict[str, Any]]:
        await publisher.publish(task())
        return await asyncio.to_thread(connections_named, mgmt, publisher.connection_name)

    [connection] = with_publisher(broker_config, body)
    assert connection["timeout"] == broker_config.heartbeat


def test_closed_publisher_refuses_to_publish(broker_config: Broker, topology: Any) -> None:
    async def main() -> None:
        publisher = AsyncPublisher(broker_config)
        await publisher.connect()
        await publisher.close()
        await publisher.publish(task())

    with pytest.raises(errors.PublishError, match="is closed"):
        asyncio.run(main())
