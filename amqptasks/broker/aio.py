"""aio-pika connections from the YAML's broker section (shared by the async publisher and the worker)."""

from __future__ import annotations

import aio_pika
import aio_pika.abc

from amqptasks import errors
from amqptasks.broker.connection import TLSOptions, tls_options
from amqptasks.broker.url import BrokerURL
from amqptasks.config.model import Broker


async def open_robust(
    broker: Broker, connection_name: str, *, timeout: float = 10.0, reconnect_interval: float = 1.0
) -> aio_pika.abc.AbstractRobustConnection:
    """A robust connection (reconnects, then restores channels and consumers); errors name the masked URL."""
    url = BrokerURL.parse(broker.url)
    ssl_context = None
    if url.scheme == "amqps":
        ssl_context = (tls_options(broker) or TLSOptions.from_query(url.query)).ssl_context()
    try:
        return await aio_pika.connect_robust(
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
        )
    except Exception as exc:
        raise errors.ConnectionError(
            f"cannot connect to {url.masked()}: {type(exc).__name__}: {exc} "
            "(is RabbitMQ running? are the user, password and vhost right?)"
        ) from None
