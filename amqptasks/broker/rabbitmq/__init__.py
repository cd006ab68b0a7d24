"""RabbitMQ behind :mod:`amqptasks.broker.drivers`: pika for threads (pipelined confirms, one connection per
thread), aio-pika for event loops (one robust connection per loop), and a shared reply-to connection for ``rpc://``."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from amqptasks.broker.drivers import Driver, OnReply
    from amqptasks.broker.rabbitmq.aio_publisher import AsyncPublisher
    from amqptasks.broker.rabbitmq.blocking import SyncPublisher
    from amqptasks.broker.rabbitmq.replies import ReplyConnection
    from amqptasks.config.model import Broker

__all__ = ["RabbitMQ", "driver"]

#: How long a blocking publish waits for its confirm before ``PublishTimeout`` (a broker resource alarm blocks
#: publishers without any error; a connection shared by mistake never sees its confirm).
CONFIRM_TIMEOUT = 30.0


class RabbitMQ:
    """The RabbitMQ driver for one broker section of the YAML."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def publisher(self) -> SyncPublisher:
        from amqptasks.broker.rabbitmq.blocking import SyncPublisher

        return SyncPublisher(self.broker, confirm_timeout=CONFIRM_TIMEOUT)

    def aio_publisher(self) -> AsyncPublisher:
        from amqptasks.broker.rabbitmq.aio_publisher import AsyncPublisher

        return AsyncPublisher(self.broker, confirm_timeout=CONFIRM_TIMEOUT)

    def reply_channel(self, on_reply: OnReply) -> ReplyConnection:
        from amqptasks.broker.rabbitmq.replies import ReplyConnection

        return ReplyConnection(self.broker, on_reply, timeout=CONFIRM_TIMEOUT)


def driver(broker: Broker) -> Driver:
    return RabbitMQ(broker)
