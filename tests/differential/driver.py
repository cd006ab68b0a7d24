"""One scenario, two brokers: a small driver API (:class:`Driver`), written once against pika's
``BlockingChannel``, and two adapters -- a real RabbitMQ vhost through pika, and the in-memory broker through its
pika-shaped connection (:mod:`amqptasks.broker.memory.blocking`). Scenarios return what they observed.

What differs between the brokers by nature is normalised here, once: the vhost name in error texts (the real one
is random), x-death times (wall clock there, a virtual clock here; both must be timestamps), and how time passes.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions

from amqptasks.broker.memory import MemoryBroker, VirtualClock
from amqptasks.broker.memory.blocking import BlockingConnection as MemoryConnection
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
    """What a scenario may do, on a pika-style connection. ``attempt`` turns a refusal into ``(code, text)``; after
    a refusal the channel is reopened, as a client would."""

    vhost: str

    def __init__(self, connection: Any, vhost: str) -> None:
        self.vhost = vhost
        self._connection = connection
        self._channel = self._open()

    # --- what differs between the adapters ----------------------------------------------------------------

    def elapse(self, seconds: float, until: Callable[[], bool] | None = None) -> None:
        """Let *seconds* pass; then (real broker) poll until *until* holds, as the broker expires lazily."""
        raise NotImplementedError

    def observed(self) -> Any:
        """What the vhost holds, as amqptasks' planner reads it (management API / the memory broker's state)."""
        raise NotImplementedError

    # --- the operations ---------------------------------------------------------------------------------

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
        args = dict(arguments or {})
        self._call(
            lambda: self._channel.exchange_declare(
                name, type, durable=durable, auto_delete=auto_delete, internal=internal, arguments=args
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
        args = dict(arguments or {})
        ok = self._call(
            lambda: self._channel.queue_declare(
                name, passive=passive, durable=durable, exclusive=exclusive, auto_delete=auto_delete, arguments=args
            )
        )
        return int(ok.method.message_count)

    def count(self, queue: str) -> int:
        return self.queue(queue, passive=True)

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
        """'ack', 'returned' (mandatory, unroutable) or 'nack' (the confirm)."""
        properties = pika.BasicProperties(
            headers=dict(headers) if headers else None,
            priority=priority,
            expiration=None if expiration is None else str(expiration),
        )
        return self._publish(exchange, key, body.encode() if isinstance(body, str) else body, properties, mandatory)

    def publish_raw_expiration(self, queue: str, expiration: str) -> str:
        """A message whose expiration property is *expiration* as given (any string)."""
        return self._publish("", queue, b"m", pika.BasicProperties(expiration=expiration), False)

    def publish_envelope(self, envelope: Envelope) -> str:
        properties = pika.BasicProperties(**envelope.properties())
        return self._publish(envelope.exchange, envelope.routing_key, envelope.body, properties, envelope.mandatory)

    def get(self, queue: str) -> Got | None:
        method, properties, body = self._call(lambda: self._channel.basic_get(queue))
        if method is None:
            return None
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

    def ack(self, tag: int, multiple: bool = False) -> None:
        self._call(lambda: self._channel.basic_ack(tag, multiple=multiple))
        self._sync()

    def get_auto_ack(self, queue: str) -> str | None:
        method, _, body = self._call(lambda: self._channel.basic_get(queue, auto_ack=True))
        return None if method is None else str(body.decode())

    def purge(self, queue: str) -> int:
        return int(self._call(lambda: self._channel.queue_purge(queue)).method.message_count)

    def delete_queue(self, name: str, *, if_empty: bool = False) -> int:
        return int(self._call(lambda: self._channel.queue_delete(name, if_empty=if_empty)).method.message_count)

    def delete_exchange(self, name: str) -> None:
        self._call(lambda: self._channel.exchange_delete(name))

    def nack(self, tag: int, requeue: bool = True, multiple: bool = False) -> None:
        self._call(lambda: self._channel.basic_nack(tag, multiple=multiple, requeue=requeue))
        self._sync()

    def reject(self, tag: int, requeue: bool = True) -> None:
        self._call(lambda: self._channel.basic_reject(tag, requeue=requeue))
        self._sync()

    def _sync(self) -> None:
        # Acks have no reply: a round trip on the same channel makes sure the broker has acted on them (and
        # raises here, not later, if it refused one).
        self._call(lambda: self._channel.basic_qos(prefetch_count=0))

    def reopen(self) -> None:
        """Close the channel (its unacked deliveries go back) and open a new one."""
        self._channel.close()
        self._channel = self._open()
        self._sync()

    def declare(self, decl: Any) -> None:
        """An amqptasks topology declaration, through amqptasks' own declare()."""
        from amqptasks.topology.declare import declare

        self._call(lambda: declare(self._channel, decl))

    # --- helpers built on the above ---------------------------------------------------------------------

    def arrived(self, queue: str, count: int = 1) -> None:
        """Wait until *queue* holds *count* messages: dead-lettering is asynchronous on a real broker (the
        dead letter travels from one queue process to another, so a get may overtake it)."""
        self.elapse(0.0, until=lambda: self.count(queue) == count)

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


class RabbitDriver(Driver):
    """A real RabbitMQ vhost, through pika."""

    def __init__(self, url: BrokerURL) -> None:
        from amqptasks.broker.connection import pika_parameters

        self.url = url
        super().__init__(
            pika.BlockingConnection(pika_parameters(url, connection_name="amqptasks differential")), url.vhost
        )

    def elapse(self, seconds: float, until: Callable[[], bool] | None = None) -> None:
        # Time passing is what these scenarios are about: the broker has no clock to move, so it must pass.
        time.sleep(seconds)
        deadline = time.monotonic() + SETTLE_DEADLINE_S
        while until is not None and not until():
            if time.monotonic() > deadline:
                raise AssertionError(f"the broker did not reach the expected state {SETTLE_DEADLINE_S:g} s later")
            time.sleep(0.02)

    def observed(self) -> Any:
        from amqptasks.broker.management import ManagementClient
        from amqptasks.topology.observe import observe_http

        return observe_http(ManagementClient.for_broker(self.url), self.vhost)


class MemoryDriver(Driver):
    """A fresh in-memory broker on a frozen virtual clock, through its pika-shaped connection."""

    def __init__(self, vhost: str = "differential") -> None:
        self.broker = MemoryBroker(vhost, VirtualClock())
        super().__init__(MemoryConnection(self.broker), vhost)

    def elapse(self, seconds: float, until: Callable[[], bool] | None = None) -> None:
        self.broker.advance(seconds)
        if until is not None:
            assert until(), "memory:// did not reach the expected state once the time had passed"

    def observed(self) -> Any:
        from amqptasks.topology.memory import observe

        return observe(self.broker)
