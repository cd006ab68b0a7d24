"""A channel on the in-memory broker, with pika's ``BlockingChannel`` method names and RabbitMQ's rules for
what closes it: any refused operation raises :class:`~.errors.ChannelError` and closes the channel, and a closed
channel gives its unacknowledged deliveries back to their queues, marked redelivered.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from amqptasks.broker.memory.broker import MemoryBroker, Routed
from amqptasks.broker.memory.declare import (
    check_exchange_equivalence,
    check_new_queue,
    check_queue_equivalence,
    check_reserved,
)
from amqptasks.broker.memory.errors import ACCESS_REFUSED, PRECONDITION_FAILED, ChannelClosed, ChannelError
from amqptasks.broker.memory.exchanges import Binding, MemoryExchange
from amqptasks.broker.memory.matching import EXCHANGE_TYPES
from amqptasks.broker.memory.message import Message, Stored
from amqptasks.broker.memory.queues import MemoryQueue

__all__ = ["Delivered", "MemoryChannel", "QueueDeclared"]

T = TypeVar("T")


@dataclass(frozen=True)
class QueueDeclared:
    queue: str
    message_count: int
    consumer_count: int = 0

    @property
    def method(self) -> QueueDeclared:  # pika's frame.method.message_count, for code written against pika
        return self


@dataclass(frozen=True)
class Delivered:
    """One message handed to this channel by ``basic_get``; settle it by ``delivery_tag``."""

    delivery_tag: int
    redelivered: bool
    exchange: str
    routing_key: str
    #: Messages left in the queue after this one.
    message_count: int
    queue: str
    body: bytes
    properties: Mapping[str, Any] = field(default_factory=dict)

    @property
    def headers(self) -> Mapping[str, Any]:
        return self.properties.get("headers") or {}


class MemoryChannel:
    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker
        self.is_open = True
        self._next_tag = 1
        self._unacked: dict[int, tuple[str, Stored]] = {}

    # --- error handling ---------------------------------------------------------------------------------

    def _run(self, op: Callable[[], T]) -> T:
        if not self.is_open:
            raise ChannelClosed("the channel is closed; open a new one")
        with self.broker.lock:
            try:
                return op()
            except ChannelError:
                self.close()
                raise

    def close(self) -> None:
        """Close the channel; its unacknowledged deliveries go back to their queues (redelivered)."""
        if not self.is_open:
            return
        self.is_open = False
        with self.broker.lock:
            unacked, self._unacked = self._unacked, {}
            for _tag, (queue, stored) in sorted(unacked.items(), reverse=True):
                self.broker.requeue(queue, stored)

    # --- exchanges ----------------------------------------------------------------------------------------

    def exchange_declare(
        self, exchange: str, exchange_type: str = "direct", passive: bool = False, durable: bool = False,
        auto_delete: bool = False, internal: bool = False, arguments: Mapping[str, Any] | None = None,
    ) -> None:  # fmt: skip
        def op() -> None:
            b = self.broker
            if exchange == "":
                raise ChannelError(ACCESS_REFUSED, "operation not permitted on the default exchange")
            existing = b.exchanges.get(exchange)
            if passive:
                b.exchange(exchange)
                return
            wanted = {"type": exchange_type, "durable": durable, "auto_delete": auto_delete, "internal": internal,
                      "arguments": dict(arguments or {})}  # fmt: skip
            if existing is not None:
                check_exchange_equivalence(exchange, b.vhost, existing.description(), wanted)
                return
            check_reserved("exchange", exchange)
            if exchange_type not in EXCHANGE_TYPES:
                raise ChannelError(PRECONDITION_FAILED, f"invalid exchange type '{exchange_type}'")
            b.exchanges[exchange] = MemoryExchange(exchange, exchange_type, durable, auto_delete, internal,
                                                   dict(arguments or {}))  # fmt: skip

        self._run(op)

    def exchange_delete(self, exchange: str, if_unused: bool = False) -> None:
        def op() -> None:
            if exchange == "":
                raise ChannelError(ACCESS_REFUSED, "operation not permitted on the default exchange")
            x = self.broker.exchanges.get(exchange)
            if x is not None and if_unused and x.bindings:
                raise ChannelError(PRECONDITION_FAILED, f"exchange '{exchange}' in vhost '{self.broker.vhost}' in use")
            self.broker.delete_exchange(exchange)

        self._run(op)

    def _bind(self, source: str, binding: Binding, add: bool) -> None:
        b = self.broker
        if source == "" or (binding.destination == "" and binding.destination_type == "exchange"):
            raise ChannelError(ACCESS_REFUSED, "operation not permitted on the default exchange")
        if binding.destination_type == "queue":
            b.queue(binding.destination)
        else:
            b.exchange(binding.destination)
        x = b.exchange(source)
        kept = [each for each in x.bindings if each.identity() != binding.identity()]
        x.bindings = [*kept, binding] if add else kept
        if not add and x.auto_delete and not x.bindings:
            b.delete_exchange(source)

    def exchange_bind(
        self, destination: str, source: str, routing_key: str = "", arguments: Mapping[str, Any] | None = None
    ) -> None:
        binding = Binding(source, destination, "exchange", routing_key, dict(arguments or {}))
        self._run(lambda: self._bind(source, binding, True))

    def exchange_unbind(
        self, destination: str, source: str, routing_key: str = "", arguments: Mapping[str, Any] | None = None
    ) -> None:
        binding = Binding(source, destination, "exchange", routing_key, dict(arguments or {}))
        self._run(lambda: self._bind(source, binding, False))

    # --- queues -------------------------------------------------------------------------------------------

    def queue_declare(
        self, queue: str, passive: bool = False, durable: bool = False, exclusive: bool = False,
        auto_delete: bool = False, arguments: Mapping[str, Any] | None = None,
    ) -> QueueDeclared:  # fmt: skip
        def op() -> QueueDeclared:
            b = self.broker
            b.tick()
            name = queue or f"amq.gen-{uuid.uuid4().hex[:22]}"
            existing = b.queues.get(name)
            if passive:
                q = b.queue(name)
                return QueueDeclared(name, len(q.ready))
            args = dict(arguments or {})
            if existing is not None:
                wanted = {"durable": durable, "auto_delete": auto_delete, "arguments": args}
                check_queue_equivalence(name, b.vhost, existing.description(), wanted)
                existing.last_used = b.now()
                return QueueDeclared(name, len(existing.ready))
            if queue:
                check_reserved("queue", name)
            check_new_queue(name, b.vhost, durable, exclusive, args)
            b.queues[name] = MemoryQueue(name, durable, exclusive, auto_delete, args, last_used=b.now())
            return QueueDeclared(name, 0)

        return self._run(op)

    def queue_bind(
        self, queue: str, exchange: str, routing_key: str | None = None, arguments: Mapping[str, Any] | None = None
    ) -> None:
        key = queue if routing_key is None else routing_key
        binding = Binding(exchange, queue, "queue", key, dict(arguments or {}))
        self._run(lambda: self._bind(exchange, binding, True))

    def queue_unbind(
        self, queue: str, exchange: str, routing_key: str | None = None, arguments: Mapping[str, Any] | None = None
    ) -> None:
        key = queue if routing_key is None else routing_key
        binding = Binding(exchange, queue, "queue", key, dict(arguments or {}))
        self._run(lambda: self._bind(exchange, binding, False))

    def queue_delete(self, queue: str, if_unused: bool = False, if_empty: bool = False) -> int:
        def op() -> int:
            q = self.broker.queues.get(queue)
            if q is not None and if_empty and q.ready:
                raise ChannelError(PRECONDITION_FAILED, f"queue '{queue}' in vhost '{self.broker.vhost}' not empty")
            return self.broker.delete_queue(queue)

        return self._run(op)

    def queue_purge(self, queue: str) -> int:
        return self._run(lambda: self.broker.queue(queue).purge())

    # --- messages -----------------------------------------------------------------------------------------

    def basic_publish(
        self, exchange: str, routing_key: str, body: bytes, properties: Mapping[str, Any] | None = None,
        mandatory: bool = False,
    ) -> Routed:  # fmt: skip
        """Publish; the result says what a confirm would: stored where, returned (mandatory), or nacked."""
        message = Message.of(body, exchange, routing_key, **dict(properties or {}))
        return self._run(lambda: self.broker.publish(message, mandatory=mandatory))

    def basic_get(self, queue: str, auto_ack: bool = False) -> Delivered | None:
        def op() -> Delivered | None:
            b = self.broker
            b.tick()
            q = b.queue(queue)
            stored, dropped = q.take(b.now())
            if dropped:
                b._dead_letter_dropped(queue, dropped)
            if stored is None:
                return None
            tag, self._next_tag = self._next_tag, self._next_tag + 1
            if auto_ack:
                q.settled()
            else:
                self._unacked[tag] = (queue, stored)
            properties = dict(stored.message.properties)
            if q.kind == "quorum":
                headers = properties.get("headers") or {}
                properties["headers"] = {**headers, "x-delivery-count": stored.delivery_count}
            m, left = stored.message, len(q.ready)
            return Delivered(tag, stored.redelivered, m.exchange, m.routing_key, left, queue, m.body, properties)

        return self._run(op)

    def _settle(self, delivery_tag: int, multiple: bool, action: Callable[[str, Stored], None]) -> None:
        if delivery_tag not in self._unacked and not (multiple and delivery_tag == 0):
            raise ChannelError(PRECONDITION_FAILED, f"unknown delivery tag {delivery_tag}")
        if multiple:
            tags = [t for t in sorted(self._unacked) if t <= delivery_tag or delivery_tag == 0]
        else:
            tags = [delivery_tag]
        for tag in tags:
            queue, stored = self._unacked.pop(tag)
            action(queue, stored)

    def basic_ack(self, delivery_tag: int = 0, multiple: bool = False) -> None:
        self._run(lambda: self._settle(delivery_tag, multiple, lambda q, s: self.broker.settle(q, s, False)))

    def basic_nack(self, delivery_tag: int = 0, multiple: bool = False, requeue: bool = True) -> None:
        self._run(lambda: self._settle(delivery_tag, multiple, self._give_back(requeue)))

    def basic_reject(self, delivery_tag: int, requeue: bool = True) -> None:
        self._run(lambda: self._settle(delivery_tag, False, self._give_back(requeue)))

    def _give_back(self, requeue: bool) -> Callable[[str, Stored], None]:
        if requeue:
            return self.broker.requeue
        return lambda queue, stored: self.broker.settle(queue, stored, True)
