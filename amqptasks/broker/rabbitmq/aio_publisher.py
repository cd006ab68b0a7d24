"""Publishing from asyncio code: ``AsyncPublisher`` on an aio-pika robust connection, confirmed.

Many publishes may be in flight at once (``asyncio.gather``); each returns once the broker confirmed its message.
aio-pika reconnects in the background after a lost connection; a publish caught by the loss waits for that, as
its retry policy allows, and sends again (the broker may then hold the message twice). aio-pika's and aiormq's
exceptions never escape: they become amqptasks errors here.
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType

import aio_pika
import aio_pika.abc
import aiormq.abc
import aiormq.exceptions
from aiormq import spec

from amqptasks import errors
from amqptasks.broker.aio import open_robust
from amqptasks.broker.outcome import BLOCKED_HINT
from amqptasks.broker.rabbitmq.blocking import DEFAULT_CONNECTION_NAME
from amqptasks.broker.retry import RetryPolicy, configured, gave_up
from amqptasks.broker.url import BrokerURL
from amqptasks.config.model import Broker
from amqptasks.message.envelope import Envelope

__all__ = ["AsyncPublisher"]

log = logging.getLogger("amqptasks.publish.aio")  # the name users configure (it was this module's)

# The connection (or the channel with it) is gone or not back yet: wait for aio-pika to reconnect, send again.
_LOST = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
    OSError,
    asyncio.IncompleteReadError,
)

_CHANNEL_HINTS: dict[type[BaseException], str] = {
    aiormq.exceptions.ChannelAccessRefused: "the broker user may not write to this exchange (check its permissions)",
    aiormq.exceptions.ChannelNotFoundEntity: "declare it first, e.g. `amqptasks topology apply`",
}


class AsyncPublisher:
    """Publishes ``Envelope``s from asyncio code; ``await publish(...)`` returns once the broker confirmed.

    ``confirm_timeout``: how long one publish may wait for its confirm (a broker resource alarm blocks
    publishers without any error) before ``PublishTimeout``; None waits forever. ``reconnect_interval``: the
    pause between aio-pika's reconnection attempts. ``reconnect_timeout``: how long a publish waits for the
    connection to come back on each retry.
    """

    def __init__(
        self,
        broker: Broker,
        *,
        connection_name: str | None = None,
        retry_policy: RetryPolicy | None = None,
        confirm_timeout: float | None = 30.0,
        connect_timeout: float = 10.0,
        reconnect_interval: float = 1.0,
        reconnect_timeout: float = 5.0,
    ) -> None:
        self._url = BrokerURL.parse(broker.url)
        self._broker = broker
        self.connection_name = connection_name or broker.connection_name or DEFAULT_CONNECTION_NAME
        self._retry_policy = retry_policy or configured(broker)
        self._confirm_timeout = confirm_timeout
        self._connect_timeout = connect_timeout
        self._reconnect_interval = reconnect_interval
        self._reconnect_timeout = reconnect_timeout
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None
        self._channel: aio_pika.abc.AbstractRobustChannel | None = None
        self._lock: asyncio.Lock | None = None  # created on first use, inside the running loop
        self._closed = False
        self._warned_at = float("-inf")

    def __repr__(self) -> str:
        return f"AsyncPublisher({self._url.masked()!r}, connection_name={self.connection_name!r})"

    # -- connection --------------------------------------------------------------------------------------------
    async def connect(self) -> None:
        """Open the connection and channel now (``publish`` otherwise does on first use).

        Raises ``amqptasks.errors.ConnectionError`` naming the masked URL when the broker cannot be reached.
        """
        await self._ready_channel()

    async def _ready_channel(self) -> aio_pika.abc.AbstractRobustChannel:
        if self._closed:
            raise errors.PublishError(f"{self!r} is closed")
        if self._channel is not None:
            return self._channel
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # many concurrent first publishes open one connection
            if self._channel is None:
                self._connection, self._channel = await self._open()
        return self._channel

    async def _open(self) -> tuple[aio_pika.abc.AbstractRobustConnection, aio_pika.abc.AbstractRobustChannel]:
        url = self._url
        connection = await open_robust(
            self._broker,
            self.connection_name,
            timeout=self._connect_timeout,
            reconnect_interval=self._reconnect_interval,
        )
        try:
            # on_return_raises: an unroutable mandatory message fails its publish (aio-pika's default is to
            # return it as the publish's result, which is far too easy to ignore).
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        except Exception as exc:
            await connection.close()
            raise errors.ConnectionError(f"cannot open a channel on {url.masked()}: {self._describe(exc)}") from None
        log.info("async publisher connected to %s as %r", url.masked(), self.connection_name)
        return connection, channel

    async def close(self) -> None:
        """Close the connection; publishing afterwards raises ``PublishError``."""
        self._closed = True
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            try:
                await connection.close()
            except Exception as exc:  # closing a dead connection must not raise
                log.debug("ignored while closing the async publisher's connection: %r", exc)

    async def __aenter__(self) -> AsyncPublisher:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- publishing --------------------------------------------------------------------------------------------
    async def publish(self, envelope: Envelope, *, retry_policy: RetryPolicy | None = None) -> None:
        """Publish one message; returns once the broker confirmed it.

        Raises ``UnroutableError``, ``PublishNacked``, ``PublishTimeout``, ``PublishConnectionError`` (retries
        exhausted) or ``PublishError`` (the broker refused the publish, e.g. a missing exchange).
        """
        try:
            properties = _properties(envelope)
        except (TypeError, ValueError) as exc:
            raise errors.PublishError(f"cannot send {envelope.describe()}: {exc}") from None
        policy = retry_policy or self._retry_policy
        intervals, retries = policy.intervals(), 0
        while True:
            try:
                await self._publish_once(envelope, properties)
                return
            except errors.ConnectionError as exc:  # connecting failed; names the masked URL
                cause = str(exc)
            except _Lost as exc:
                cause = str(exc)
            delay = next(intervals, None)
            if delay is None:
                raise gave_up(envelope.describe(), cause, retries) from None
            retries += 1
            self._log_retry("publishing %s: %s; retry %d in %.2f s", envelope.describe(), cause, retries, delay)
            await asyncio.sleep(delay)

    def _log_retry(self, message: str, *args: object) -> None:
        # A lost connection fails every publish in flight at once: warn about the first, not about thousands.
        now = asyncio.get_running_loop().time()
        if now - self._warned_at >= 1.0:
            self._warned_at = now
            log.warning(message + " (further retries within a second are logged at DEBUG level)", *args)
        else:
            log.debug(message, *args)

    async def _publish_once(self, envelope: Envelope, properties: spec.Basic.Properties) -> None:
        underlay = await self._underlay()
        try:
            await underlay.basic_publish(
                envelope.body,
                exchange=envelope.exchange,
                routing_key=envelope.routing_key,
                properties=properties,
                mandatory=envelope.mandatory,
                timeout=self._confirm_timeout,
            )
        except aiormq.exceptions.PublishError:  # basic.return: before DeliveryError, its base class
            raise errors.UnroutableError(envelope.exchange, envelope.routing_key) from None
        except aiormq.exceptions.DeliveryError:
            raise errors.PublishNacked(
                f"the broker refused {envelope.describe()} (basic.nack: a full queue with "
                "x-overflow=reject-publish, or a broker internal error; the message was not stored)"
            ) from None
        except aiormq.exceptions.ChannelClosed as exc:
            hint = _CHANNEL_HINTS.get(type(exc))
            reply = exc.args[-1] if exc.args else type(exc).__name__
            raise errors.PublishError(
                f"cannot publish {envelope.describe()}: the broker closed the channel with {reply}"
                f"{f' ({hint})' if hint else ''}"
            ) from None
        except (TypeError, ValueError) as exc:  # pamqp cannot encode it: nothing was sent
            raise errors.PublishError(f"cannot send {envelope.describe()}: {exc}") from None
        except TimeoutError:
            raise errors.PublishTimeout(
                f"no confirm for {envelope.describe()} within {self._confirm_timeout:g} s: {BLOCKED_HINT}, "
                "or a queue cannot take writes; the broker may or may not have it"
            ) from None
        except _LOST as exc:
            raise _Lost(f"lost the connection to {self._url.masked()} ({self._describe(exc)})") from None

    async def _underlay(self) -> aiormq.abc.AbstractChannel:
        """The open aiormq channel under our robust channel, once aio-pika has restored it."""
        channel = await self._ready_channel()
        connection = self._connection
        if connection is not None and connection.connected.is_set() and not channel.is_closed:
            return await channel.get_underlay_channel()  # the usual case: no timeout machinery per publish
        # After a lost connection, or a channel closed by the broker, aio-pika restores the channel in the
        # background. Its ready() can still pass for a moment after the close (the restore runs as a callback),
        # so also wait for the channel underneath to be an open one -- but not forever.
        try:
            async with asyncio.timeout(self._reconnect_timeout):
                while True:
                    await channel.ready()
                    underlay = await channel.get_underlay_channel()
                    if not underlay.is_closed:
                        return underlay
                    await asyncio.sleep(0.01)
        except TimeoutError:
            raise _Lost(f"not reconnected to {self._url.masked()} within {self._reconnect_timeout:g} s") from None
        except _LOST as exc:
            raise _Lost(f"lost the connection to {self._url.masked()} ({self._describe(exc)})") from None

    def _describe(self, exc: BaseException) -> str:
        text = str(exc) or repr(exc)
        if self._url.password:  # belt and braces: no library message should carry it, but never show it
            text = text.replace(self._url.password, "****")
        return f"{type(exc).__name__}: {text}"


class _Lost(Exception):
    """Internal: the publish failed for a transport reason and may be retried."""


def _properties(envelope: Envelope) -> spec.Basic.Properties:
    return spec.Basic.Properties(**envelope.properties())
