"""memory:// behind :mod:`amqptasks.broker.drivers`: what the app's connection owner asks a driver for."""

from __future__ import annotations

from typing import TYPE_CHECKING

from amqptasks.broker.memory.broker import MemoryBroker
from amqptasks.broker.memory.publishing import MemoryAioPublisher, MemoryPublisher, MemoryReplyChannel, OnReply
from amqptasks.broker.memory.registry import broker_for

if TYPE_CHECKING:
    from amqptasks.config.model import Broker

__all__ = ["MemoryDriver"]


class MemoryDriver:
    def __init__(self, broker: Broker) -> None:
        self.broker: MemoryBroker = broker_for(broker.url)

    def publisher(self) -> MemoryPublisher:
        return MemoryPublisher(self.broker)

    def aio_publisher(self) -> MemoryAioPublisher:
        return MemoryAioPublisher(self.broker)

    def reply_channel(self, on_reply: OnReply) -> MemoryReplyChannel:
        return MemoryReplyChannel(self.broker, on_reply)
