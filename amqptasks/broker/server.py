"""What a connection learned about the broker at its other end (its RabbitMQ version)."""

from __future__ import annotations

from typing import Any

from amqptasks.config.versions import RabbitMQVersion

__all__ = ["server_version"]


def server_version(connection: Any) -> RabbitMQVersion | None:
    """The RabbitMQ version in the server properties of a pika connection (blocking or not), or None.

    RabbitMQ sends ``version`` in connection.start; pika keeps the table on the connection implementation.
    """
    impl = getattr(connection, "_impl", connection)
    properties = getattr(impl, "server_properties", None) or {}
    return RabbitMQVersion.parse(properties.get("version") or properties.get(b"version"))
