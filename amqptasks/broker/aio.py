"""aio-pika connections from the YAML's broker section (shared by the async publisher and the worker)."""

from __future__ import annotations

import ssl
from typing import Any

import aio_pika
import aio_pika.abc
from aio_pika.connection import make_url

from amqptasks import errors
from amqptasks.broker.connection import TLSOptions, connect_error, tls_options
from amqptasks.broker.failover import failover_class
from amqptasks.broker.url import BrokerURL, auth_mechanism
from amqptasks.config.model import Broker


async def open_robust(
    broker: Broker, connection_name: str, *, timeout: float = 10.0, reconnect_interval: float = 1.0
) -> aio_pika.abc.AbstractRobustConnection:
    """A robust connection (reconnects, then restores channels and consumers); errors name the masked URL.

    With several nodes (``amqp://h1;amqp://h2``) the first that answers is used, and each reconnect attempt goes
    to the next node (:mod:`amqptasks.broker.failover`).
    """
    url = BrokerURL.parse(broker.url)
    ssl_context = None
    try:
        extra: dict[str, Any] = {"auth": "external"} if auth_mechanism(url) == "external" else {}  # aiormq's name
    except ValueError as exc:
        raise errors.ConnectionError(str(exc)) from None
    if url.scheme == "amqps":
        ssl_context = (tls_options(broker) or TLSOptions.from_query(url.query)).ssl_context()
    options = {
        "heartbeat": broker.heartbeat,
        "reconnect_interval": reconnect_interval,
        **extra,
    }
    nodes = [
        make_url(
            host=node.host, port=node.port, login=node.username, password=node.password, virtualhost=node.vhost,
            ssl=node.scheme == "amqps", **options,
        )
        for node in url.nodes()
    ]  # fmt: skip
    failure: BaseException | None = None
    for first in range(len(nodes)):
        order = tuple(nodes[first:] + nodes[:first])
        try:
            connection: aio_pika.abc.AbstractRobustConnection = await aio_pika.connect_robust(
                order[0],
                ssl_context=ssl_context,
                timeout=timeout,
                # Shown as the connection's name in the management UI and `rabbitmqctl list_connections`.
                client_properties={"connection_name": connection_name},
                connection_class=failover_class(order),
            )
            return connection
        except Exception as exc:
            failure = exc
    assert failure is not None
    tls = _tls_cause(failure)
    if tls is not None:
        raise connect_error(url, tls) from None
    raise errors.ConnectionError(
        f"cannot connect to {url.masked()}: {type(failure).__name__}: {failure} "
        "(is RabbitMQ running? are the user, password and vhost right?)"
    ) from None


def _tls_cause(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error behind *exc*: aiormq re-raises it as AMQPConnectionError(*args) from the original."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None or isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
