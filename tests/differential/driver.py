"""One scenario, two brokers: a small driver API with an adapter for pika on a real RabbitMQ vhost and one for
the in-memory broker. Scenarios are written once against :class:`Driver` and return what they observed.

What differs between the brokers by nature is normalised here, once: the vhost name in error texts (the real one
is random), and x-death times (wall clock there, a virtual clock here; both must be timestamps).
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions

from amqptasks.broker.memory import ChannelError, MemoryBroker, VirtualClock
from amqptasks.broker.url import BrokerURL
from amqptasks.message.envelope import Envelope

#: Real broker: how long to keep polling for the state a scenario waits for after its time has passed.
SETTLE_DEADLINE_S = 10.0


class Refused(Exception):
    """The broker closed the channel; ``code`` and ``text`` are its reply (vhost name normalised)."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(code, text)
        self.code, self.text = code, text


@dataclass(frozen=True)
class Got:
    body: bytes
    headers: dict[str, Any]
    redelivered: bool
    exchange: str
    routing_key: str
    tag: int
    priority: int | None
    expiration: str | None

    def seen(self) -> tuple[Any, ...]:
        """Everything a consumer observes, for comparing the two brokers."""
        return (
            self.body,
            self.headers,
            self.redelivered,
            self.exchange,
            self.routing_key,
            self.priority,
            self.expiration,
        )


def normalise(value: Any) -> Any:
    if isinstance(value, datetime.datetime):
        return "<timestamp>" if value.tzinfo is not None else "<naive timestamp>"
    if isinstance(value, dict):
        return {k: normalise(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [normalise(v) for v in value]
    if isinstance(value, bytes):
        return value.decode()
    return value


class Driver:
    """What a scenario may do. ``attempt`` turns a refusal into ``(code, text)``; the channel is reopened."""

    vhost: str

    def exchange(
        self,
        name: str,
        type: str = "direct",
        *,
        durable: bool = True,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        raise NotImplementedError

    def queue(
        self,
        name: str,
        *,
        durable: bool = True,
        exclusive: bool = False,
        auto_delete: bool = False,
        arguments: Mapping[str, Any] | None = None,
        passive: bool = False,
    ) -> int:
        raise NotImplementedError

    def bind(self, queue: str, exchange: str, key: str = "", arguments: Mapping[str, Any] | None = None) -> None:
        raise NotImplementedError

    def unbind(self, queue: str, exchange: str, key: str = "", arguments: Mapping[str, Any] | None = None) -> None:
        raise NotImplementedError

    def bind_exchange(
        self, destination: str, source: str, key: str = "", arguments: Mapping[str, Any] | None = None
    ) -> None:
        raise NotImplementedError

    def publish(
        self,
        exchange: str,
        key: str,
        body: bytes | str,
        *,
        headers: Mapping[str, Any] | None = None,
        priority: int | None = None,
        expiration: int | None = None,
        mandatory: bool = False,
    ) -> str:
        """'ack', 'returned' (mandatory, unroutable) or 'nack'."""
        raise NotImplementedError

    def publish_envelope(self, envelope: Envelope) -> str:
        raise NotImplementedError

    def get(self, queue: str) -> Got | None:
        raise NotImplementedError

    def ack(self, tag: int) -> None:
        raise NotImplementedError

    def nack(self, tag: int, requeue: bool = True) -> None:
        raise NotImplementedError

    def reject(self, tag: int, requeue: bool = True) -> None:
        raise NotImplementedError

    def reopen(self) -> None:
        """Close the channel (its unacked deliveries go back) and open a new one."""
        raise NotImplementedError

    def count(self, queue: str) -> int:
        return self.queue(queue, passive=True)

    def elapse(self, seconds: float, until: Callable[[], bool] | None = None) -> None:
        """Let *seconds* pass; then (real broker) poll until *until* holds, as the broker expires lazily."""
        raise NotImplementedError

    def declare(self, decl: Any) -> None:
        """An amqptasks topology declaration, through amqptasks' own declare()."""
        raise NotImplementedError

    def arrived(self, queue: str, count: int = 1) -> None:
        """Wait until *queue* holds *count* messages: dead-lettering is asynchronous on a real broker (the
        dead letter travels from one queue process to another, so a get may overtake it)."""
        self.elapse(0.0, until=lambda: self.count(queue) == count)

    # --- helpers built on the above ---------------------------------------------------------------------

    def attempt(self, op: Callable[[], Any]) -> Any:
        try:
            return ("ok", normalise(op()))
        except Refused as exc:
            return ("refused", exc.code, exc.text)

    def drain(self, queue: str) -> list[tuple[Any, ...]]:
        """Take and ack every message of *queue*: what a consumer would see of each."""
        seen = []
        while (got := self.get(queue)) is not None:
            seen.append(got.seen())
            self.ack(got.tag)
        return seen

    def bodies(self, queue: str) -> list[str]:
        return [str(item[0]) for item in self.drain(queue)]


def _got(method: Any, properties: Any, body: bytes) -> Got:
    return Got(
        body,
        normalise(dict(properties.headers or {})),
        bool(method.redelivered),
        method.exchange,
        method.routing_key,
        method.delivery_tag,
        properties.priority,
        properties.expiration,
    )


class RabbitDriver(Driver):
    def __init__(self, url: BrokerURL) -> None:
        self.vhost = url.vhost
        self._connection = pika.BlockingConnection(_parameters(url))
        self._channel = self._open()

    def _open(self) -> Any:
        channel = self._connection.channel()
        channel.confirm_delivery()
        return channel

    def close(self) -> None:
        if self._connection.is_open:
            self._connection.close()

    def _call(self, op: Callable[[], Any]) -> Any:
        try:
            return op()
        except pika.exceptions.ChannelClosedByBroker as exc:
            self._channel = self._open()
            raise Refused(exc.reply_code, exc.reply_text.replace(self.vhost, "{vhost}")) from None

    def exchange(
        self,
        name: str,
        type: str = "direct",
        *,
        durable: bool = True,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        self._call(
            lambda: self._channel.exchange_declare(
                name, type, durable=durable, auto_delete=auto_delete, internal=internal, arguments=dict(arguments or {})
            )
        )

    def queue(
        self,
        name: str,
        *,
        durable: bool = True,
        exclusive: bool = False,
        auto_delete: bool = False,
        arguments: Mapping[str, Any] | None = None,
        passive: bool = False,
    ) -> int:
        ok = self._call(
            lambda: self._channel.queue_declare(
                name,
                passive=passive,
                durable=durable,
                exclusive=exclusive,
                auto_delete=auto_delete,
                arguments=dict(arguments or {}),
            )
        )
        return int(ok.method.message_count)

    def bind(self, queue: str, exchange: str, key: str = "", arguments: Mapping[str, Any] | None = None) -> None:
        self._call(lambda: self._channel.queue_bind(queue, exchange, key, arguments=dict(arguments or {})))

    def unbind(self, queue: str, exchange: str, key: str = "", arguments: Mapping[str, Any] | None = None) -> None:
        self._call(lambda: self._channel.queue_unbind(queue, exchange, key, arguments=dict(arguments or {})))

    def bind_exchange(
        self, destination: str, source: str, key: str = "", arguments: Mapping[str, Any] | None = None
    ) -> None:
        self._call(lambda: self._channel.exchange_bind(destination, source, key, arguments=dict(arguments or {})))

    def _publish(self, exchange: str, key: str, body: bytes, properties: pika.BasicProperties, mandatory: bool) -> str:
        try:
            self._call(lambda: self._channel.basic_publish(exchange, key, body, properties, mandatory=mandatory))
        except pika.exceptions.UnroutableError:
            return "returned"
        except pika.exceptions.NackError:
            return "nack"
        return "ack"

    def publish(
        self,
        exchange: str,
        key: str,
        body: bytes | str,
        *,
        headers: Mapping[str, Any] | None = None,
        priority: int | None = None,
        expiration: int | None = None,
        mandatory: bool = False,
    ) -> str:
        properties = pika.BasicProperties(
            headers=dict(headers) if headers else None,
            priority=priority,
            expiration=None if expiration is None else str(expiration),
        )
        return self._publish(exchange, key, body.encode() if isinstance(body, str) else body, properties, mandatory)

    def publish_envelope(self, envelope: Envelope) -> str:
        properties = pika.BasicProperties(**envelope.properties())
        return self._publish(envelope.exchange, envelope.routing_key, envelope.body, properties, envelope.mandatory)

    def get(self, queue: str) -> Got | None:
        method, properties, body = self._call(lambda: self._channel.basic_get(queue))
        return None if method is None else _got(method, properties, body)

    def ack(self, tag: int) -> None:
        self._call(lambda: self._channel.basic_ack(tag))
        self._sync()

    def nack(self, tag: int, requeue: bool = True) -> None:
        self._call(lambda: self._channel.basic_nack(tag, requeue=requeue))
        self._sync()

    def reject(self, tag: int, requeue: bool = True) -> None:
        self._call(lambda: self._channel.basic_reject(tag, requeue=requeue))
        self._sync()

    def _sync(self) -> None:
        # Acks have no reply: a round trip on the same channel makes sure the broker has acted on them (and
        # raises here, not later, if it refused one).
        self._call(lambda: self._channel.basic_qos(prefetch_count=0))

    def reopen(self) -> None:
        self._channel.close()
        self._channel = self._open()
        self._sync()

    def elapse(self, seconds: float, until: Callable[[], bool] | None = None) -> None:
        # Time passing is what these scenarios are about: the broker has no clock to move, so it must pass.
        time.sleep(seconds)
        deadline = time.monotonic() + SETTLE_DEADLINE_S
        while until is not None and not until():
            if time.monotonic() > deadline:
                raise AssertionError(f"the broker did not reach the expected state {SETTLE_DEADLINE_S:g} s later")
            time.sleep(0.02)

    def declare(self, decl: Any) -> None:
        from amqptasks.topology.declare import declare

        self._call(lambda: declare(self._channel, decl))


def _parameters(url: BrokerURL) -> pika.ConnectionParameters:
    from amqptasks.broker.connection import pika_parameters

    return pika_parameters(url, connection_name="amqptasks differential")


class MemoryDriver(Driver):
    def __init__(self, vhost: str = "differential") -> None:
        self.vhost = vhost
        self.clock = VirtualClock()
        self.broker = MemoryBroker(vhost, self.clock)
        self._channel = self.broker.channel()

    def _call(self, op: Callable[[], Any]) -> Any:
        try:
            return op()
        except ChannelError as exc:
            self._channel = self.broker.channel()
            raise Refused(exc.reply_code, exc.reply_text.replace(self.vhost, "{vhost}")) from None

    def exchange(
        self,
        name: str,
        type: str = "direct",
        *,
        durable: bool = True,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        self._call(
            lambda: self._channel.exchange_declare(
                name, type, durable=durable, auto_delete=auto_delete, internal=internal, arguments=arguments
            )
        )

    def queue(
        self,
        name: str,
        *,
        durable: bool = True,
        exclusive: bool = False,
        auto_delete: bool = False,
        arguments: Mapping[str, Any] | None = None,
        passive: bool = False,
    ) -> int:
        ok = self._call(
            lambda: self._channel.queue_declare(
                name,
                passive=passive,
                durable=durable,
                exclusive=exclusive,
                auto_delete=auto_delete,
                arguments=arguments,
            )
        )
        return int(ok.message_count)

    def bind(self, queue: str, exchange: str, key: str = "", arguments: Mapping[str, Any] | None = None) -> None:
        self._call(lambda: self._channel.queue_bind(queue, exchange, key, arguments))

    def unbind(self, queue: str, exchange: str, key: str = "", arguments: Mapping[str, Any] | None = None) -> None:
        self._call(lambda: self._channel.queue_unbind(queue, exchange, key, arguments))

    def bind_exchange(
        self, destination: str, source: str, key: str = "", arguments: Mapping[str, Any] | None = None
    ) -> None:
        self._call(lambda: self._channel.exchange_bind(destination, source, key, arguments))

    def _publish(self, exchange: str, key: str, body: bytes, properties: dict[str, Any], mandatory: bool) -> str:
        routed = self._call(lambda: self._channel.basic_publish(exchange, key, body, properties, mandatory))
        return "nack" if routed.nacked else "returned" if routed.returned else "ack"

    def publish(
        self,
        exchange: str,
        key: str,
        body: bytes | str,
        *,
        headers: Mapping[str, Any] | None = None,
        priority: int | None = None,
        expiration: int | None = None,
        mandatory: bool = False,
    ) -> str:
        properties = {
            "headers": dict(headers) if headers else None,
            "priority": priority,
            "expiration": None if expiration is None else str(expiration),
        }
        return self._publish(exchange, key, body.encode() if isinstance(body, str) else body, properties, mandatory)

    def publish_envelope(self, envelope: Envelope) -> str:
        return self._publish(
            envelope.exchange, envelope.routing_key, envelope.body, envelope.properties(), envelope.mandatory
        )

    def get(self, queue: str) -> Got | None:
        got = self._call(lambda: self._channel.basic_get(queue))
        if got is None:
            return None
        p = got.properties
        return Got(
            got.body,
            normalise(dict(p.get("headers") or {})),
            got.redelivered,
            got.exchange,
            got.routing_key,
            got.delivery_tag,
            p.get("priority"),
            p.get("expiration"),
        )

    def ack(self, tag: int) -> None:
        self._call(lambda: self._channel.basic_ack(tag))

    def nack(self, tag: int, requeue: bool = True) -> None:
        self._call(lambda: self._channel.basic_nack(tag, requeue=requeue))

    def reject(self, tag: int, requeue: bool = True) -> None:
        self._call(lambda: self._channel.basic_reject(tag, requeue=requeue))

    def reopen(self) -> None:
        self._channel.close()
        self._channel = self.broker.channel()

    def elapse(self, seconds: float, until: Callable[[], bool] | None = None) -> None:
        self.broker.advance(seconds)
        if until is not None:
            assert until(), "memory:// did not reach the expected state once the time had passed"

    def declare(self, decl: Any) -> None:
        from amqptasks.topology.declare import declare

        self._call(lambda: declare(self._channel, decl))
