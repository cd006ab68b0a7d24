"""aio-pika connections from the YAML's broker section (shared by the async publisher and the worker)."""

from __future__ import annotations

import ssl
from typing import Any

import aio_pika
import aio_pika.abc

from amqptasks import errors
from amqptasks.broker.connection import TLSOptions, connect_error, tls_options
from amqptasks.broker.url import BrokerURL, auth_mechanism
from amqptasks.config.model import Broker


async def open_robust(
    broker: Broker, connection_name: str, *, timeout: float = 10.0, reconnect_interval: float = 1.0
) -> aio_pika.abc.AbstractRobustConnection:
    """A robust connection (reconnects, then restores channels and consumers); errors name the masked URL."""
    url = BrokerURL.parse(broker.url)
    ssl_context = None
    try:
        extra: dict[str, Any] = {"auth": "external"} if auth_mechanism(url) == "external" else {}  # aiormq's name
    except ValueError as exc:
        raise errors.ConnectionError(str(exc)) from None
    if url.scheme == "amqps":
        ssl_context = (tls_options(broker) or TLSOptions.from_query(url.query)).ssl_context()
    try:
        connection: aio_pika.abc.AbstractRobustConnection = await aio_pika.connect_robust(
            host=url.host,
            port=url.port,
            login=url.username,
            password=url.password,
            virtualhost=url.vhost,
            ssl=url.scheme == "amqps",
            ssl_context=ssl_context,
            timeout=timeout,
            # Shown as the connection's name in the management UI and `rabbitmqctl list_connections`.
            client_properties={"connection_name": connection_name},
            heartbeat=broker.heartbeat,
            reconnect_interval=reconnect_interval,
            **extra,
        )
    except Exception as exc:
        tls = _tls_cause(exc)
        if tls is not None:
            raise connect_error(url, tls) from None
        raise errors.ConnectionError(
            f"cannot connect to {url.masked()}: {type(exc).__name__}: {exc} "
            "(is RabbitMQ running? are the user, password and vhost right?)"
        ) from None
    return connection


def _tls_cause(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error behind *exc*: aiormq re-raises it as AMQPConnectionError(*args) from the original."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None or isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
