"""``memory://``: an in-process broker that follows RabbitMQ's rules, for tests without a broker.

Pure: no network, no pika. :class:`MemoryBroker` holds one vhost (exchanges, queues, bindings) and applies
RabbitMQ 3.x's routing, TTL, length limits, priorities, dead-lettering (x-death and its cycle rule), quorum
delivery limits and declaration checks; :class:`MemoryChannel` is how clients talk to it, with pika's method
names. Time comes from a clock, a :class:`VirtualClock` that tests move forward by hand.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from amqptasks.broker.memory.broker import MemoryBroker, Peeked, Routed
from amqptasks.broker.memory.channel import Delivered, MemoryChannel, QueueDeclared
from amqptasks.broker.memory.clock import Clock, SystemClock, VirtualClock
from amqptasks.broker.memory.errors import ChannelClosed, ChannelError
from amqptasks.broker.memory.message import Message
from amqptasks.broker.memory.registry import broker_for, forget, is_memory_url

if TYPE_CHECKING:
    from amqptasks.broker.drivers import Driver
    from amqptasks.config.model import Broker

__all__ = [
    "ChannelClosed",
    "ChannelError",
    "Clock",
    "Delivered",
    "MemoryBroker",
    "MemoryChannel",
    "Message",
    "Peeked",
    "QueueDeclared",
    "Routed",
    "SystemClock",
    "VirtualClock",
    "broker_for",
    "driver",
    "forget",
    "is_memory_url",
]


def driver(broker: Broker) -> Driver:
    """The driver :func:`amqptasks.broker.drivers.driver_for` uses for memory:// URLs."""
    from amqptasks.broker.memory.drivers import MemoryDriver

    return MemoryDriver(broker)
