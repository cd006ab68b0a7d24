"""Test harness: a real RabbitMQ, one fresh vhost per test.

Without a reachable broker, broker tests skip locally and fail under CI (CI=true or CI=1), so CI can never go
green by skipping them.

Markers added at collection (``dev.py test`` selects by them for its second broker target, tests/rabbitmq4.py):
``broker`` on every test that uses the shared broker (the ``broker`` fixture, directly or through ``vhost``,
``mgmt``, ``channel``...), ``private_node`` on every test that starts its own node (``tests/broker_node.py``).
Tests whose expectations differ by RabbitMQ version take the ``broker_version`` fixture.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from typing import Any, NoReturn

import pytest

from amqptasks.broker import BrokerURL, ManagementClient, open_blocking
from amqptasks.config.versions import RabbitMQVersion
from amqptasks.constants import DEFAULT_BROKER_URL, ENV_BROKER_URL
from amqptasks.errors import ManagementAPIError


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI", "").strip().lower() in ("true", "1"):
        pytest.fail(f"{reason} -- CI is set, so broker tests fail instead of skipping", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def broker() -> BrokerURL:
    """The broker under test (``AMQPTASKS_BROKER_URL`` or the default), checked once per session."""
    url = BrokerURL.parse(os.environ.get(ENV_BROKER_URL) or DEFAULT_BROKER_URL)
    todo = f"start one, or point {ENV_BROKER_URL} at one"
    try:
        socket.create_connection((url.host, url.port), timeout=2).close()
    except OSError as exc:
        _unavailable(f"no RabbitMQ reachable at {url.masked()} ({exc.strerror or exc}; {todo})")
    try:
        ManagementClient.for_broker(url, timeout=3).overview()
    except ManagementAPIError as exc:
        _unavailable(f"no RabbitMQ management API for {url.masked()}: {exc}")
    return url


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        if info is None:
            continue
        if "broker" in info.names_closure:
            item.add_marker(pytest.mark.broker)
        defs = (d for ds in info.name2fixturedefs.values() for d in ds)
        if any(_starts_a_node(d.func) for d in defs):
            item.add_marker(pytest.mark.private_node)


def _starts_a_node(fixture: object) -> bool:
    names = getattr(getattr(fixture, "__code__", None), "co_names", ())
    return "private_node" in names or "private_cluster" in names


def pytest_report_header() -> str:
    return f"broker target: {os.environ.get('AMQPTASKS_TEST_TARGET') or 'the local RabbitMQ'}"


@pytest.fixture(scope="session")
def broker_version(mgmt: ManagementClient) -> RabbitMQVersion:
    """The version of the broker under test: for tests that expect each version's own behaviour
    (``if broker_version.major >= 4: ...``)."""
    found = RabbitMQVersion.parse(mgmt.overview().get("rabbitmq_version"))
    assert found is not None, "the management API did not report rabbitmq_version"
    return found


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A reachable Redis for the redis:// results tests (skipped locally without one, failed under CI)."""
    url = "redis://127.0.0.1:6379/0"
    try:
        import redis
    except ImportError:
        _unavailable("the redis client is not installed (pip install 'amqptasks[redis]')")
    client = redis.Redis.from_url(url)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        _unavailable(f"no Redis reachable at {url} ({exc}; start one, e.g. docker run -p 6379:6379 redis)")
    finally:
        client.close()
    return url


@pytest.fixture(scope="session")
def mgmt(broker: BrokerURL) -> ManagementClient:
    return ManagementClient.for_broker(broker)


def _fresh_vhost(broker: BrokerURL, mgmt: ManagementClient) -> Iterator[BrokerURL]:
    name = f"amqptasks-test-{uuid.uuid4().hex[:8]}"
    mgmt.create_vhost(name)
    try:
        mgmt.set_permissions(name, broker.username)
        yield broker.with_vhost(name)
    finally:
        mgmt.delete_vhost(name)


@pytest.fixture
def vhost(broker: BrokerURL, mgmt: ManagementClient) -> Iterator[BrokerURL]:
    """The broker URL of a fresh vhost, where the URL's user has full permissions; deleted afterwards."""
    yield from _fresh_vhost(broker, mgmt)


@pytest.fixture(scope="module")
def module_vhost(broker: BrokerURL, mgmt: ManagementClient) -> Iterator[BrokerURL]:
    """A fresh vhost shared by one test module (for a module-scoped worker process); deleted afterwards."""
    yield from _fresh_vhost(broker, mgmt)


@pytest.fixture
def channel(vhost: BrokerURL, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A pika ``BlockingChannel`` on the test's vhost; its connection is named after the test."""
    connection = open_blocking(vhost, connection_name=f"amqptasks-tests {request.node.name}")
    try:
        yield connection.channel()
    finally:
        if connection.is_open:
            connection.close()
