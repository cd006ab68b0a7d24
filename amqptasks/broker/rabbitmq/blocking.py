"""Publishing from ordinary (threaded) code: ``SyncPublisher``, confirmed by default.

pika is not thread-safe, so each thread gets its own connection and channel, opened on its first publish. A lost
connection is reopened and the unconfirmed messages sent again, as the retry policy allows; the broker may then
hold a message twice (it got it, but its confirm was lost with the connection), so consumers must tolerate
duplicates. Nothing is ever dropped silently: every message is confirmed, or the call raises.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from types import TracebackType

import pika
import pika.exceptions

from amqptasks import errors
from amqptasks.broker.connection import open_blocking, tls_options
from amqptasks.broker.outcome import BLOCKED_HINT, Outcome
from amqptasks.broker.rabbitmq.pipeline import ConfirmChannel, ConfirmTimeout, Item
from amqptasks.broker.retry import RetryPolicy, configured, gave_up
from amqptasks.broker.url import BrokerURL
from amqptasks.config.model import Broker
from amqptasks.message.envelope import Envelope

__all__ = ["DEFAULT_CONNECTION_NAME", "SyncPublisher"]

log = logging.getLogger("amqptasks.publish.sync")  # the name users configure (it was this module's)

#: Connection name shown in the management UI unless the YAML or the caller names it.
DEFAULT_CONNECTION_NAME = "amqptasks publisher"

# The connection (or our channel on it) is gone: reconnect and send again. ConnectionBlockedTimeout is an
# AMQPConnectionError too, but it is handled before these: retrying into a resource alarm only waits longer.
_LOST = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.ChannelWrongStateError,
    pika.exceptions.ChannelClosedByClient,
    OSError,
)

_CHANNEL_HINTS = {
    403: "the broker user may not write to this exchange (check its permissions)",
    404: "declare it first, e.g. `amqptasks topology apply`",
}


class _Link:
    """One thread's connection and its confirm channel."""

    def __init__(self, connection: pika.BlockingConnection, thread: threading.Thread) -> None:
        self.connection = connection
        self.thread = thread
        self.channel: ConfirmChannel | None = None

    def close(self) -> None:
        try:
            if self.connection.is_open:
                self.connection.close()
        except Exception as exc:  # closing a dead connection must not hide the error that killed it
            log.debug("ignored while closing a publisher connection: %r", exc)


class SyncPublisher:
    """Publishes ``Envelope``s and returns once the broker confirmed them. Safe to share between threads.

    ``blocked_connection_timeout``: how long a connection blocked by a broker resource alarm may stay blocked
    before a publish fails with ``PublishTimeout`` (a value in the broker URL's query wins). ``confirm_timeout``:
    how long one wait for confirms may last before ``PublishTimeout`` (None: for ever; a connection another
    process wrote on after a fork never sees its confirm). ``window``: how many messages ``publish_many`` keeps
    unconfirmed at once (and at most 64 MiB of bodies).
    """

    def __init__(
        self,
        broker: Broker,
        *,
        confirm: bool = True,
        connection_name: str | None = None,
        retry_policy: RetryPolicy | None = None,
        blocked_connection_timeout: float = 30.0,
        confirm_timeout: float | None = 30.0,
        window: int = 10_000,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, not {window}")
        self._url = BrokerURL.parse(broker.url)
        self._tls = tls_options(broker)
        self._heartbeat = broker.heartbeat
        self.connection_name = connection_name or broker.connection_name or DEFAULT_CONNECTION_NAME
        self._confirm = confirm
        self._retry_policy = retry_policy or configured(broker)
        self._blocked_connection_timeout = blocked_connection_timeout
        self._confirm_timeout = confirm_timeout
        self._window = window
        self._local = threading.local()
        self._links: set[_Link] = set()  # every thread's link, so close() can reach them
        self._lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"SyncPublisher({self._url.masked()!r}, connection_name={self.connection_name!r})"

    # -- publishing --------------------------------------------------------------------------------------------
    def publish(self, envelope: Envelope, *, retry_policy: RetryPolicy | None = None) -> None:
        """Publish one message; returns once the broker confirmed it.

        Raises ``UnroutableError`` (mandatory and no queue bound), ``PublishNacked``, ``PublishTimeout`` (broker
        resource alarm), ``PublishConnectionError`` (retries exhausted), or ``PublishError`` (the broker refused
        the publish, e.g. a missing exchange).
        """
        outcome = Outcome(taken=1)
        self._run(iter(((0, envelope),)), outcome, retry_policy, envelope.describe())

    def publish_many(self, envelopes: Iterable[Envelope], *, retry_policy: RetryPolicy | None = None) -> None:
        """Publish a batch with many confirms in flight; returns once every message is confirmed.

        The same guarantees as ``publish``, per message. Every message is attempted: if some are returned as
        unroutable, ``BatchUnroutableError`` names the first and lists all (``positions``) after the others
        were confirmed; ``PublishNacked`` likewise for nacks. ``envelopes`` is consumed as it is sent (a generator
        is never held whole); if taking an item from it raises, the messages before it are settled first and
        ``BatchInterrupted`` says how far the batch got.
        """
        outcome = Outcome(batch=True)
        self._run(_numbered(envelopes, outcome), outcome, retry_policy, "a batch of messages")

    def _run(self, items: Iterator[Item], outcome: Outcome, policy: RetryPolicy | None, what: str) -> None:
        policy = policy or self._retry_policy
        intervals, retries, confirmed_before = policy.intervals(), 0, outcome.confirmed
        while True:
            link: _Link | None = None
            try:
                link = self._link()
                self._channel(link).send(items, outcome)
                break
            except pika.exceptions.ConnectionBlockedTimeout:
                self._discard(link)
                raise errors.PublishTimeout(
                    f"cannot publish {what}: {BLOCKED_HINT}; the connection stayed blocked for more than "
                    f"{self._blocked_connection_timeout:g} s (blocked_connection_timeout){outcome.progress()}"
                ) from None
            except _SourceFailed:  # the pipeline settled what was sent before; outcome.error() reports it
                break
            except ConfirmTimeout:
                self._discard(link)
                raise errors.PublishTimeout(
                    f"no confirm for {what} within {self._confirm_timeout:g} s: {BLOCKED_HINT}, or a queue cannot "
                    f"take writes; the broker may or may not have it{outcome.progress()}"
                ) from None
            except pika.exceptions.ChannelClosedByBroker as exc:
                if link is not None:
                    link.channel = None  # the next publish on this thread opens a new channel
                hint = _CHANNEL_HINTS.get(exc.reply_code)
                raise errors.PublishError(
                    f"cannot publish {what}: the broker closed the channel with {exc.reply_code} {exc.reply_text}"
                    f"{f' ({hint})' if hint else ''}{outcome.progress()}"
                ) from None
            except errors.ConnectionError as exc:  # opening the connection failed; names the masked URL
                cause, resend = str(exc), []
            except _LOST as exc:
                cause = f"lost the connection to {self._url.masked()} ({_describe(exc)})"
                resend = link.channel.unsettled() if link is not None and link.channel is not None else []
                self._discard(link)
            if outcome.confirmed != confirmed_before:  # progress since the last failure: a fresh set of retries
                intervals, retries, confirmed_before = policy.intervals(), 0, outcome.confirmed
            delay = next(intervals, None)
            if delay is None:
                raise gave_up(what, cause, retries, outcome.progress()) from None
            retries += 1
            log.warning("publishing %s: %s; retry %d in %.2f s", what, cause, retries, delay)
            time.sleep(delay)
            items = itertools.chain(resend, items)
        error = outcome.error()
        if error is not None:
            if outcome.nacked and link is not None and link.channel is not None:
                # RabbitMQ 3.10 can go on nacking every publish of a channel whose quorum queue lost its leader
                # (the new leader is there, the channel's session is not): the next publish gets a new channel.
                channel, link.channel = link.channel, None
                channel.close()
            raise error

    # -- connections -------------------------------------------------------------------------------------------
    def _link(self) -> _Link:
        if self._closed:
            raise errors.PublishError(f"{self!r} is closed")
        link: _Link | None = getattr(self._local, "link", None)
        if link is not None and link.connection.is_open:
            return link
        self._discard(link)
        connection = open_blocking(
            self._url,
            heartbeat=self._heartbeat,
            connection_name=self.connection_name,
            tls=self._tls,
            blocked_connection_timeout=self._blocked_connection_timeout,
        )
        link = _Link(connection, threading.current_thread())
        with self._lock:
            closed = self._closed
            if not closed:
                # Threads that ended without closing leave their connection behind: close it now.
                stale = {each for each in self._links if not each.thread.is_alive()}
                self._links -= stale
                self._links.add(link)
        if closed:
            link.close()
            raise errors.PublishError(f"{self!r} is closed")
        for each in stale:
            each.close()
        self._local.link = link
        log.info("publisher connected to %s as %r", self._url.masked(), self.connection_name)
        return link

    def _channel(self, link: _Link) -> ConfirmChannel:
        channel = link.channel
        if channel is not None and channel.is_open and channel.clean:
            return channel
        if channel is not None:  # an earlier call ended abruptly with messages in flight: start afresh
            link.channel = None
            channel.close()
        link.channel = ConfirmChannel(
            link.connection, confirm=self._confirm, window=self._window, confirm_timeout=self._confirm_timeout
        )
        return link.channel

    def _discard(self, link: _Link | None) -> None:
        if link is None:
            return
        with self._lock:
            self._links.discard(link)
        current: _Link | None = getattr(self._local, "link", None)
        if current is link:
            self._local.link = None
        link.close()

    def close(self) -> None:
        """Close every thread's connection. Call it once no thread is publishing any more (pika connections
        are not thread-safe). Publishing afterwards raises ``PublishError``."""
        with self._lock:
            self._closed = True
            links, self._links = self._links, set()
        for link in links:
            link.close()

    def __enter__(self) -> SyncPublisher:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class _SourceFailed(Exception):
    """Internal: the caller's iterable failed (recorded in ``Outcome.interrupted``); stops the pipeline."""


def _numbered(envelopes: Iterable[Envelope], outcome: Outcome) -> Iterator[Item]:
    source = iter(envelopes)
    position = 0
    while True:
        try:
            envelope = next(source)
            if not isinstance(envelope, Envelope):
                raise TypeError(f"item #{position} is a {type(envelope).__name__}, not an Envelope")
        except StopIteration:
            return
        except Exception as exc:  # the caller's generator failed (or gave a non-envelope): nothing more is taken
            outcome.interrupted = (position, exc)
            raise _SourceFailed from exc
        outcome.taken = position + 1
        yield position, envelope
        position += 1


def _describe(exc: BaseException) -> str:
    if isinstance(exc, pika.exceptions.ConnectionClosed):
        return f"closed with {exc.reply_code} {exc.reply_text}"
    if isinstance(exc, pika.exceptions.AMQPHeartbeatTimeout):
        return "missed heartbeats"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
