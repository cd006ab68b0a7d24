"""The seam between amqptasks and a broker, in the style of httpx's transports: a small interface, one
implementation per URL scheme, chosen in one place (:func:`driver_for`).

- ``amqp://`` and ``amqps://``: RabbitMQ (:mod:`amqptasks.broker.rabbitmq`: pika and aio-pika).
- ``memory://``: the in-process broker (:mod:`amqptasks.broker.memory`), a real implementation for tests.

A :class:`Driver` only *makes* things; :class:`amqptasks.broker.connections.Connections` owns what it made (one
owner per app and process: created on first use, forgotten in a forked child, closed with the app). The rest of the
package asks that owner for "a confirmed publisher for this context" and never opens a connection of its own.

What a driver makes:

- :class:`Publisher` -- for threads: blocking, thread-safe, returns once the broker confirmed.
- :class:`AioPublisher` -- for one event loop: ``await publish(...)`` returns once confirmed; never blocks the loop.
- :class:`ReplyChannel` -- for ``rpc://``: tasks published on it get their replies (result states) back to it.

Every publish reports failures as :mod:`amqptasks.errors` (``UnroutableError`` for a mandatory message no queue
took, ``PublishNacked``, ``PublishTimeout``, ``PublishConnectionError`` once the retry policy gave up,
``PublishError`` for a refused publish), never as a transport library's exception, and no blocking call waits
without a bound.

A driver module exposes ``driver(broker: amqptasks.config.model.Broker) -> Driver``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

from amqptasks import errors

if TYPE_CHECKING:
    from amqptasks.broker.retry import RetryPolicy
    from amqptasks.config.model import Broker
    from amqptasks.message.envelope import Envelope

__all__ = ["AioPublisher", "Driver", "OnReply", "Publisher", "ReplyChannel", "driver_for", "scheme_of"]

#: The module implementing each URL scheme (imported on first use: RabbitMQ code is not loaded for memory://).
DRIVERS = {
    "amqp": "amqptasks.broker.rabbitmq",
    "amqps": "amqptasks.broker.rabbitmq",
    "memory": "amqptasks.broker.memory",
}

#: A reply for ``rpc://``: its body and correlation id (the task id), called in a thread of the driver's.
OnReply = Callable[[bytes, "str | None"], None]


class Publisher(Protocol):
    """Blocking and confirmed; safe to share between threads (each thread may get its own connection)."""

    def publish(self, envelope: Envelope, *, retry_policy: RetryPolicy | None = None) -> None:
        """Returns once the broker confirmed *envelope*; raises an ``amqptasks.errors.PublishError``."""

    def publish_many(self, envelopes: Iterable[Envelope], *, retry_policy: RetryPolicy | None = None) -> None:
        """Every envelope confirmed (pipelined), or ``BatchUnroutableError``/``BatchInterrupted``/... raised."""

    def close(self) -> None:
        """Close every connection it opened; publishing afterwards raises ``PublishError``."""


class AioPublisher(Protocol):
    """Confirmed publishing on one event loop (made, connected and used on that loop only)."""

    async def connect(self) -> None:
        """Connect now; ``amqptasks.errors.ConnectionError`` names the masked URL when the broker is unreachable."""

    async def publish(self, envelope: Envelope, *, retry_policy: RetryPolicy | None = None) -> None:
        """Returns once the broker confirmed *envelope*; raises as :meth:`Publisher.publish`."""

    async def close(self) -> None: ...


class ReplyChannel(Protocol):
    """``rpc://``: publishes tasks with ``reply_to=amq.rabbitmq.reply-to`` on the channel that receives their
    replies; each reply is handed to the ``on_reply`` it was made with."""

    @property
    def is_open(self) -> bool:
        """False once its connection is lost or closed (the owner then makes a new one; replies due on the old
        one are lost)."""

    def publish(self, envelope: Envelope) -> None:
        """Returns once confirmed; bounded: ``PublishTimeout`` says what it waited for."""

    def pump(self, seconds: float) -> bool:
        """Read replies in the calling thread for up to *seconds* (less once one came); False at once when this
        thread cannot (another thread reads them, or the driver hands them over by itself)."""

    def close(self) -> None: ...


class Driver(Protocol):
    """Makes the broker objects of one URL (see the module docstring)."""

    def publisher(self) -> Publisher: ...

    def aio_publisher(self) -> AioPublisher:
        """A new, unconnected publisher for the running loop (the owner connects it, once per loop)."""

    def reply_channel(self, on_reply: OnReply) -> ReplyChannel:
        """A new reply channel, connected; ``amqptasks.errors.ConnectionError`` if it cannot be."""


def scheme_of(url: str) -> str:
    """The URL's scheme, lower-cased (``amqp``, ``amqps``, ``memory``)."""
    scheme, sep, _ = url.strip().partition("://")
    return scheme.lower() if sep else ""


def driver_for(broker: Broker) -> Driver:
    """The driver for ``broker.url``'s scheme: the one place that maps a URL to a broker implementation."""
    scheme = scheme_of(broker.url)
    module_name = DRIVERS.get(scheme)
    if module_name is None:
        raise errors.ConnectionError(
            f"unsupported broker URL scheme {scheme!r}: use amqp://, amqps:// or memory:// "
            "(set AMQPTASKS_BROKER_URL or --broker)"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise errors.ConnectionError(f"{scheme}:// is not available in this version of amqptasks") from None
    make: Callable[[Broker], Driver] = module.driver
    return make(broker)
