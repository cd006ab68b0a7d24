"""A memory:// broker dressed as ``pika.BlockingConnection``, for the code that talks to RabbitMQ through a
blocking pika connection of its own (chords, the DLQ tools, topology probing, the beat lock): results come back
in pika's shapes (``basic_get`` gives ``(method, properties, body)``, ``queue_declare`` a frame with ``.method``),
and a refusal raises pika's ``ChannelClosedByBroker``, so that code needs no second branch.

The only module of :mod:`amqptasks.broker.memory` that imports pika: the core stays pure.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from types import SimpleNamespace
from typing import Any, TypeVar

import pika
import pika.exceptions

from amqptasks.broker.memory.broker import MemoryBroker
from amqptasks.broker.memory.channel import MemoryChannel
from amqptasks.broker.memory.errors import ChannelError
from amqptasks.broker.memory.message import PROPERTY_NAMES
from amqptasks.errors import BrokerError

__all__ = ["BlockingConnection"]

T = TypeVar("T")


def _properties(properties: Any) -> dict[str, Any]:
    if properties is None:
        return {}
    if isinstance(properties, Mapping):
        return dict(properties)
    return {name: getattr(properties, name, None) for name in PROPERTY_NAMES}


class BlockingChannel:
    def __init__(self, broker: MemoryBroker) -> None:
        self._channel = MemoryChannel(broker)

    @property
    def is_open(self) -> bool:
        return self._channel.is_open

    def _call(self, op: Callable[[], T]) -> T:
        try:
            return op()
        except ChannelError as exc:
            raise pika.exceptions.ChannelClosedByBroker(exc.reply_code, exc.reply_text) from None

    def __getattr__(self, name: str) -> Any:
        # Declarations, bindings, deletes, acks: the same names and arguments as pika's BlockingChannel.
        method = getattr(self._channel, name, None)
        if method is None or name.startswith("_"):
            raise BrokerError(
                f"memory:// has no {name}(): it is a broker inside one process, so nothing here can wait for other "
                "processes (workers, monitors) to answer; use a RabbitMQ for that, or amqptasks.testing in-process"
            )
        return lambda *args, **kwargs: self._call(lambda: method(*args, **kwargs))

    def basic_publish(self, exchange: str, routing_key: str, body: bytes, properties: Any = None,
                      mandatory: bool = False) -> None:  # fmt: skip
        routed = self._call(lambda: self._channel.basic_publish(exchange, routing_key, body, _properties(properties),
                                                                mandatory))  # fmt: skip
        if routed.returned:
            raise pika.exceptions.UnroutableError([])
        if routed.nacked:
            raise pika.exceptions.NackError([])

    def basic_get(self, queue: str, auto_ack: bool = False) -> tuple[Any, Any, Any]:
        got = self._call(lambda: self._channel.basic_get(queue, auto_ack))
        if got is None:
            return None, None, None
        method = SimpleNamespace(delivery_tag=got.delivery_tag, redelivered=got.redelivered, exchange=got.exchange,
                                 routing_key=got.routing_key, message_count=got.message_count)  # fmt: skip
        return method, pika.BasicProperties(**dict(got.properties)), got.body

    def queue_purge(self, queue: str) -> Any:
        count = self._call(lambda: self._channel.queue_purge(queue))
        return SimpleNamespace(method=SimpleNamespace(message_count=count))

    def queue_delete(self, queue: str, if_unused: bool = False, if_empty: bool = False) -> Any:
        count = self._call(lambda: self._channel.queue_delete(queue, if_unused, if_empty))
        return SimpleNamespace(method=SimpleNamespace(message_count=count))

    def confirm_delivery(self) -> None:
        """Publishing is always confirmed here."""

    def basic_qos(self, *args: Any, **kwargs: Any) -> None:
        """Deliveries are only taken with basic_get here."""

    def close(self) -> None:
        self._channel.close()


class BlockingConnection:
    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker
        self.is_open = True
        self._channels: list[BlockingChannel] = []

    @property
    def is_closed(self) -> bool:
        return not self.is_open

    def channel(self) -> BlockingChannel:
        if not self.is_open:
            raise pika.exceptions.ConnectionWrongStateError("the connection is closed")
        channel = BlockingChannel(self.broker)
        self._channels.append(channel)
        return channel

    def process_data_events(self, time_limit: float = 0) -> None:
        """Nothing arrives asynchronously here: waiting is just time passing."""
        if time_limit:
            time.sleep(time_limit)

    def sleep(self, duration: float) -> None:
        time.sleep(duration)

    def close(self) -> None:
        """Close every channel (their unacknowledged deliveries go back to their queues)."""
        self.is_open = False
        for channel in self._channels:
            channel.close()
