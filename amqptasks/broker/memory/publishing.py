"""Confirmed publishing to an in-memory broker, behind the same interfaces as RabbitMQ's publishers
(:mod:`amqptasks.broker.drivers`): ``UnroutableError`` for a returned mandatory message, ``PublishNacked`` for a
full ``reject-publish`` queue, ``PublishError`` with the broker's reply for a refused publish (a missing exchange).
Publishing is synchronous here: the broker has routed and stored the message when the call returns.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterable
from typing import Any

from amqptasks import errors
from amqptasks.broker.memory.broker import MemoryBroker
from amqptasks.broker.memory.errors import ChannelError
from amqptasks.broker.memory.message import Message
from amqptasks.broker.outcome import Outcome
from amqptasks.broker.retry import RetryPolicy
from amqptasks.constants import DIRECT_REPLY_TO
from amqptasks.message.envelope import Envelope

__all__ = ["MemoryAioPublisher", "MemoryPublisher", "MemoryReplyChannel", "OnReply"]

OnReply = Any  # Callable[[bytes, str | None], None] (see amqptasks.broker.drivers.OnReply)


def _message(envelope: Envelope, reply_to: str | None = None) -> Message:
    properties = envelope.properties()
    if reply_to is not None:
        properties["reply_to"] = reply_to
    return Message.of(envelope.body, envelope.exchange, envelope.routing_key, **properties)


def _send(broker: MemoryBroker, outcome: Outcome, position: int, envelope: Envelope, reply_to: str | None) -> None:
    try:
        routed = broker.publish(_message(envelope, reply_to), mandatory=envelope.mandatory)
    except ChannelError as exc:
        hint = " (declare it first, e.g. `amqptasks topology apply`)" if exc.reply_code == 404 else ""
        raise errors.PublishError(
            f"cannot publish {envelope.describe()}: the broker closed the channel with {exc.reply_code} "
            f"{exc.reply_text}{hint}{outcome.progress()}"
        ) from None
    if routed.nacked:
        outcome.nacked.append((position, envelope))
    elif routed.returned:
        outcome.returned.append((position, envelope))
    else:
        outcome.confirmed += 1


class MemoryPublisher:
    """Blocking and confirmed (see the module docstring); thread-safe through the broker's lock."""

    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker
        self._closed = False

    def __repr__(self) -> str:
        return f"MemoryPublisher(vhost={self.broker.vhost!r})"

    def _check_open(self) -> None:
        if self._closed:
            raise errors.PublishError(f"{self!r} is closed")

    def publish(self, envelope: Envelope, *, retry_policy: RetryPolicy | None = None) -> None:
        self._check_open()
        outcome = Outcome(taken=1)
        _send(self.broker, outcome, 0, envelope, None)
        error = outcome.error()
        if error is not None:
            raise error

    def publish_many(self, envelopes: Iterable[Envelope], *, retry_policy: RetryPolicy | None = None) -> None:
        self._check_open()
        outcome = Outcome(batch=True)
        source = iter(envelopes)
        for position in itertools.count():
            try:
                envelope = next(source)
                if not isinstance(envelope, Envelope):
                    raise TypeError(f"item #{position} is a {type(envelope).__name__}, not an Envelope")
            except StopIteration:
                break
            except Exception as exc:  # the caller's generator failed: what went before is settled already
                outcome.interrupted = (position, exc)
                break
            outcome.taken = position + 1
            _send(self.broker, outcome, position, envelope, None)
        error = outcome.error()
        if error is not None:
            raise error

    def close(self) -> None:
        self._closed = True


class MemoryAioPublisher:
    """The event-loop twin: the broker call does not block (it never waits for I/O)."""

    def __init__(self, broker: MemoryBroker) -> None:
        self._publisher = MemoryPublisher(broker)

    async def connect(self) -> None:
        self._publisher._check_open()

    async def publish(self, envelope: Envelope, *, retry_policy: RetryPolicy | None = None) -> None:
        self._publisher.publish(envelope, retry_policy=retry_policy)

    async def close(self) -> None:
        self._publisher.close()


class MemoryReplyChannel:
    """``rpc://`` on memory://: direct reply-to. Tasks published here carry a ``reply_to`` address of this
    channel's (``amq.rabbitmq.reply-to.<id>``, as RabbitMQ rewrites it); a reply published to that address
    through the default exchange is handed to *on_reply* at once, in the publishing thread."""

    def __init__(self, broker: MemoryBroker, on_reply: OnReply) -> None:
        self.broker = broker
        self.address = f"{DIRECT_REPLY_TO}.{uuid.uuid4().hex}"
        self._publisher = MemoryPublisher(broker)
        broker.reply_sinks[self.address] = on_reply
        self._open = True

    @property
    def is_open(self) -> bool:
        return self._open

    def publish(self, envelope: Envelope) -> None:
        self._publisher._check_open()
        outcome = Outcome(taken=1)
        _send(self.broker, outcome, 0, envelope, self.address if envelope.reply_to == DIRECT_REPLY_TO else None)
        error = outcome.error()
        if error is not None:
            raise error

    def pump(self, seconds: float) -> bool:
        return False  # replies are handed over as they are published

    def close(self) -> None:
        self._open = False
        self.broker.reply_sinks.pop(self.address, None)
        self._publisher.close()
