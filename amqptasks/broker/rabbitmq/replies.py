"""The ``rpc://`` reply channel on RabbitMQ: direct reply-to, consumed and published on one channel.

The process consumes the pseudo-queue ``amq.rabbitmq.reply-to`` (no-ack) on one channel and publishes its tasks
with ``reply_to="amq.rabbitmq.reply-to"`` **on that same channel**: the broker rewrites reply_to to a name that
routes back to this consumer. pika is not thread-safe, so the channel lives in a thread of its own, and publishes
from other threads are handed to it with ``add_callback_threadsafe``. Every wait is bounded and says what it
waited for. If the connection is lost, :attr:`ReplyThread.is_open` turns False and the owner makes a new one;
replies still due on the old one are lost.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

import pika
import pika.exceptions

from amqptasks import errors
from amqptasks.broker.connection import open_blocking, tls_options
from amqptasks.broker.drivers import OnReply
from amqptasks.broker.url import BrokerURL
from amqptasks.config.model import Broker
from amqptasks.constants import DIRECT_REPLY_TO
from amqptasks.message.envelope import Envelope

__all__ = ["ReplyThread"]

log = logging.getLogger("amqptasks.results")


class ReplyThread(threading.Thread):
    """One connection and channel: consumes the direct reply-to and publishes the tasks expecting replies."""

    def __init__(self, broker: Broker, on_reply: OnReply, timeout: float) -> None:
        super().__init__(name="amqptasks-rpc-results", daemon=True)
        self._broker = broker
        self._on_reply = on_reply
        self._timeout = timeout
        self._url = BrokerURL.parse(broker.url)
        self._ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._connection: Any = None
        self._channel: Any = None
        self._stopping = False
        #: The reply-to address the broker gives this channel's consumer (``amq.rabbitmq.reply-to.<id>``): what
        #: the later steps of a chain carry as their ``reply_to`` (as Celery's ``freeze()`` sets it), so that a
        #: worker other than ours publishing them still sends their results here.
        self.address: str | None = None

    @classmethod
    def start_for(cls, broker: Broker, on_reply: OnReply, *, timeout: float) -> ReplyThread:
        """Started and connected; ``ConnectionError`` (or ``PublishTimeout`` after *timeout*) otherwise."""
        thread = cls(broker, on_reply, timeout)
        thread.start()
        try:
            thread._ready.result(timeout)
        except concurrent.futures.TimeoutError:
            thread.stop()
            raise errors.PublishTimeout(
                f"the rpc:// results connection to {thread._url.masked()} was not ready within {timeout:g} s"
            ) from None
        return thread

    @property
    def is_open(self) -> bool:
        return not self._stopping and self.is_alive()

    def run(self) -> None:
        try:
            self._connection = open_blocking(
                self._url, connection_name="amqptasks results (rpc)", tls=tls_options(self._broker),
                heartbeat=self._broker.heartbeat,
            )  # fmt: skip
            self._channel = self._connection.channel()
            self._channel.confirm_delivery()
            self._channel.basic_consume(DIRECT_REPLY_TO, self._reply, auto_ack=True)
            self.address = self._probe_address()
        except Exception as exc:
            self._stopping = True
            self._ready.set_exception(exc)
            return
        self._ready.set_result(None)
        try:
            while not self._stopping:
                self._connection.process_data_events(time_limit=1)
        except Exception as exc:  # connection lost: the owner makes a new channel for the next publish
            if not self._stopping:
                log.warning("rpc results connection lost (%r); results still due on it are lost", exc)
        finally:
            self._stopping = True
            try:
                if self._connection.is_open:
                    self._connection.close()
            except Exception:
                log.debug("closing the rpc results connection failed", exc_info=True)

    def _probe_address(self) -> str | None:
        """The broker rewrites ``reply_to`` only on what it delivers: send one probe to a private queue and read it."""
        probe = self._channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
        try:
            self._channel.basic_publish("", probe, b"", pika.BasicProperties(reply_to=DIRECT_REPLY_TO), mandatory=True)
            _method, properties, _body = self._channel.basic_get(probe, auto_ack=True)  # confirmed: it is there
            return str(properties.reply_to) if properties is not None and properties.reply_to else None
        finally:
            self._channel.queue_delete(probe)

    def _reply(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        self._on_reply(body, properties.correlation_id)

    def publish(self, envelope: Envelope) -> None:
        def send() -> None:
            properties = pika.BasicProperties(**envelope.properties())
            try:
                self._channel.basic_publish(envelope.exchange, envelope.routing_key, envelope.body, properties,
                                            mandatory=envelope.mandatory)  # fmt: skip
            except pika.exceptions.UnroutableError:
                raise errors.UnroutableError(envelope.exchange, envelope.routing_key) from None
            except pika.exceptions.NackError:
                raise errors.PublishNacked(f"the broker refused {envelope.describe()} (basic.nack)") from None
            except pika.exceptions.AMQPError as exc:
                raise errors.PublishError(f"cannot publish {envelope.describe()}: {exc!r}") from None

        self._call(send, envelope.describe())

    def _call(self, fn: Callable[[], None], what: str) -> None:
        """Run *fn* in this thread (it owns the channel) and wait for it, at most the timeout."""
        done: concurrent.futures.Future[None] = concurrent.futures.Future()

        def run() -> None:
            try:
                fn()
            except BaseException as exc:
                done.set_exception(exc)
            else:
                done.set_result(None)

        if not self.is_open:
            raise errors.PublishConnectionError(f"cannot publish {what}: the rpc:// results connection is closed")
        try:
            self._connection.add_callback_threadsafe(run)
        except Exception as exc:  # closed between the check and the hand-over
            raise errors.PublishConnectionError(f"cannot publish {what}: the rpc:// results connection "
                                                f"is closed ({exc!r})") from None  # fmt: skip
        try:
            done.result(self._timeout)
        except concurrent.futures.TimeoutError:
            raise errors.PublishTimeout(
                f"no confirm for {what} on the rpc:// results connection within {self._timeout:g} s "
                f"({'its connection was lost' if not self.is_open else 'the broker may be blocking publishers'}); "
                "the broker may or may not have it"
            ) from None

    def stop(self) -> None:
        self._stopping = True
        if self._connection is not None and self._connection.is_open:
            with contextlib.suppress(Exception):
                self._connection.add_callback_threadsafe(lambda: None)  # wakes process_data_events

    def close(self) -> None:
        self.stop()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(5)
