"""The ``rpc://`` reply channel on RabbitMQ: direct reply-to, consumed and published on one channel.

The process consumes the pseudo-queue ``amq.rabbitmq.reply-to`` (no-ack) on one channel and publishes its tasks
with ``reply_to="amq.rabbitmq.reply-to"`` **on that same channel**: the broker rewrites reply_to to a name that
routes back to this consumer.

pika is not thread-safe, so one thread at a time has the connection (a lock), and **the calling thread does the
I/O itself** rather than hand it to a thread of ours: ``delay()`` publishes and waits for its confirm in the
caller's thread, and ``get()`` reads the socket in the caller's thread (:meth:`ReplyConnection.pump`) until its
result is there. A round trip ``delay().get()`` so costs no thread hand-off at all (each one is a futex wake-up,
50-100 µs on a small VM; the thread this replaced made three per round trip). When another thread has the
connection, a publish asks it to yield (``add_callback_threadsafe`` wakes a pumping thread, which then steps
aside) and a ``get()`` waits for the replies that thread reads for it. Whoever had the connection hands every
reply it read to ``on_reply`` before letting go.

A small thread (:data:`POLL_S`) reads the connection when nobody has for a while: heartbeats, and replies
nobody waits for (they would otherwise sit in the socket buffer). Every wait is bounded and says what it waited
for. If the connection is lost, :attr:`ReplyConnection.is_open` turns False and the owner makes a new one;
replies still due on the old one are lost.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pika
import pika.exceptions

from amqptasks import errors
from amqptasks.broker.connection import open_blocking, tls_options
from amqptasks.broker.drivers import OnReply
from amqptasks.broker.outcome import BLOCKED_HINT, Outcome
from amqptasks.broker.rabbitmq.pipeline import ConfirmChannel, ConfirmTimeout
from amqptasks.broker.url import BrokerURL
from amqptasks.config.model import Broker
from amqptasks.constants import DIRECT_REPLY_TO
from amqptasks.message.envelope import Envelope

__all__ = ["POLL_S", "ReplyConnection"]

log = logging.getLogger("amqptasks.results")

#: The connection is read by the poll thread once nobody else has read it for this long.
POLL_S = 0.5


class ReplyConnection:
    """One connection and channel: consumes the direct reply-to and publishes the tasks expecting replies.
    Safe to share between threads (see the module docstring)."""

    def __init__(self, broker: Broker, on_reply: OnReply, timeout: float) -> None:
        self._url = BrokerURL.parse(broker.url)
        self._on_reply = on_reply
        self._timeout = timeout
        self._io = threading.Lock()  # held by the thread using the connection
        self._wanted = 0  # threads waiting to publish: a pumping thread steps aside for them
        self._wanted_lock = threading.Lock()
        self._last_io = time.monotonic()
        self._closed = threading.Event()
        self._connection = open_blocking(
            self._url, connection_name="amqptasks results (rpc)", tls=tls_options(broker), heartbeat=broker.heartbeat
        )
        try:
            self._channel = ConfirmChannel(self._connection, confirm_timeout=timeout)
            self._channel.consume(DIRECT_REPLY_TO, self._reply)
            #: The reply-to address the broker gives this channel's consumer (``amq.rabbitmq.reply-to.<id>``):
            #: what the later steps of a chain carry as their ``reply_to`` (as Celery's ``freeze()`` sets it),
            #: so that a worker other than ours publishing them still sends their results here.
            self.address = self._probe_address()
        except Exception:
            self._close_connection()
            raise
        self._poller = threading.Thread(target=self._poll, name="amqptasks-rpc-results", daemon=True)
        self._poller.start()

    @property
    def is_open(self) -> bool:
        return not self._closed.is_set() and bool(self._connection.is_open)

    # --- publishing ----------------------------------------------------------------------------------------

    def publish(self, envelope: Envelope) -> None:
        outcome = Outcome(taken=1)
        with self._held(f"cannot publish {envelope.describe()}"):
            try:
                self._channel.send(iter(((0, envelope),)), outcome)
            except ConfirmTimeout:
                self._lost("no confirm")
                raise errors.PublishTimeout(
                    f"no confirm for {envelope.describe()} on the rpc:// results connection within "
                    f"{self._timeout:g} s: {BLOCKED_HINT}; the broker may or may not have it"
                ) from None
            except pika.exceptions.ChannelClosedByBroker as exc:  # e.g. 404: the task's exchange does not exist
                self._closed.set()  # the channel is gone: the next publish makes a new connection
                hint = " (declare it first, e.g. `amqptasks topology apply`)" if exc.reply_code == 404 else ""
                raise errors.PublishError(
                    f"cannot publish {envelope.describe()}: the broker closed the channel with {exc.reply_code} "
                    f"{exc.reply_text}{hint}"
                ) from None
            except pika.exceptions.AMQPError as exc:
                self._lost(repr(exc))
                raise errors.PublishConnectionError(
                    f"cannot publish {envelope.describe()}: the rpc:// results connection was lost ({exc!r})"
                ) from None
            self._read(0)  # hand over the replies read while waiting for the confirm
        error = outcome.error()
        if error is not None:
            raise error

    # --- reading -------------------------------------------------------------------------------------------

    def pump(self, seconds: float) -> bool:
        """Read the connection in this thread for up to *seconds* (less once a reply came), handing replies to
        ``on_reply``; False at once when another thread has it (the replies it reads reach ``on_reply`` from
        there) or it is closed."""
        if self._wanted or not self.is_open or not self._io.acquire(blocking=False):
            return False
        if self._wanted:  # a publisher came between the check and the lock: it goes first
            self._io.release()
            return False
        try:
            self._read(seconds)
        finally:
            self._io.release()
        return True

    def _poll(self) -> None:
        while not self._closed.wait(POLL_S):
            if time.monotonic() - self._last_io < POLL_S or not self._io.acquire(blocking=False):
                continue
            try:
                self._read(0)
            finally:
                self._io.release()
            if not self._connection.is_open:
                self._lost("closed")

    def _read(self, seconds: float) -> None:
        """With the connection held."""
        try:
            self._connection.process_data_events(time_limit=max(0.0, seconds))
        except Exception as exc:  # lost: the owner makes a new connection for the next publish
            self._lost(repr(exc))
        self._last_io = time.monotonic()

    def _reply(self, _channel: Any, _method: Any, properties: Any, body: bytes) -> None:
        self._on_reply(body, properties.correlation_id)

    @contextlib.contextmanager
    def _held(self, what: str) -> Iterator[None]:
        """The connection, for this thread; a thread pumping for replies is asked to step aside."""
        if not self.is_open:
            raise errors.PublishConnectionError(f"{what}: the rpc:// results connection is closed")
        if not self._io.acquire(blocking=False):
            with self._wanted_lock:
                self._wanted += 1
            try:
                with contextlib.suppress(Exception):  # closed meanwhile: acquiring tells
                    self._connection.add_callback_threadsafe(_noop)  # wakes a thread waiting in pump()
                if not self._io.acquire(timeout=self._timeout):
                    raise errors.PublishTimeout(
                        f"{what}: the rpc:// results connection stayed busy for {self._timeout:g} s"
                    )
            finally:
                with self._wanted_lock:
                    self._wanted -= 1
        try:
            if not self.is_open:
                raise errors.PublishConnectionError(f"{what}: the rpc:// results connection is closed")
            yield
        finally:
            self._io.release()

    def _probe_address(self) -> str | None:
        """The broker rewrites ``reply_to`` only on what it delivers: send one probe to a private queue and read it."""
        channel = self._channel.blocking
        probe = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
        try:
            outcome = Outcome(taken=1)
            envelope = Envelope("", probe, b"", headers={}, reply_to=DIRECT_REPLY_TO, delivery_mode=1)
            self._channel.send(iter(((0, envelope),)), outcome)  # confirmed: it is there
            _method, properties, _body = channel.basic_get(probe, auto_ack=True)
            return str(properties.reply_to) if properties is not None and properties.reply_to else None
        finally:
            channel.queue_delete(probe)

    # --- closing -------------------------------------------------------------------------------------------

    def _lost(self, why: str) -> None:
        if not self._closed.is_set():
            self._closed.set()
            log.warning("rpc results connection lost (%s); results still due on it are lost", why)

    def close(self) -> None:
        if self._closed.is_set() and not self._connection.is_open:
            return
        self._closed.set()
        if threading.current_thread() is not self._poller:
            self._poller.join(5)
        if self._io.acquire(timeout=5):
            try:
                self._close_connection()
            finally:
                self._io.release()

    def _close_connection(self) -> None:
        try:
            if self._connection.is_open:
                self._connection.close()
        except Exception:
            log.debug("closing the rpc results connection failed", exc_info=True)


def _noop() -> None:
    pass
