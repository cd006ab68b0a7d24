"""``SyncPublisher``: confirmed publishing from threads. RabbitMQ's implementation lives with the broker code
(:mod:`amqptasks.broker.rabbitmq.blocking`); an app's own publisher comes from ``app.connections``."""

from amqptasks.broker.rabbitmq.blocking import DEFAULT_CONNECTION_NAME, SyncPublisher

__all__ = ["DEFAULT_CONNECTION_NAME", "SyncPublisher"]
