"""``AsyncPublisher``: confirmed publishing from asyncio code. RabbitMQ's implementation lives with the broker code
(:mod:`amqptasks.broker.rabbitmq.aio_publisher`); an app's own comes from ``await app.connections.aio_publisher()``."""

from amqptasks.broker.rabbitmq.aio_publisher import AsyncPublisher

__all__ = ["AsyncPublisher"]
