"""``rpc://``: results come back to the publishing process through RabbitMQ's direct reply-to.

The publishing process consumes the pseudo-queue ``amq.rabbitmq.reply-to`` (no-ack) on one channel and
publishes its tasks with ``reply_to="amq.rabbitmq.reply-to"`` **on that same channel**: the broker rewrites
reply_to to a name that routes back to this consumer, and workers publish state messages to it through the
default exchange. Nothing is declared or stored on the broker; a result whose publisher went away is dropped.

pika is not thread-safe, so the channel lives in a thread of its own (one per backend), and publishes from
other threads are handed to it with ``add_callback_threadsafe``. If its connection is lost, the next publish
opens a new one; results still due on the old one are lost (their ``get()`` times out).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pika
import pika.exceptions

from amqptasks import errors
from amqptasks.broker.connection import open_blocking, tls_options
from amqptasks.broker.url import BrokerURL
from amqptasks.message.envelope import Envelope
from amqptasks.results.backend import OnMessage, ResultBackend, StateBook
from amqptasks.results.states import DIRECT_REPLY_TO, decode, encode

if TYPE_CHECKING:
    from amqptasks.app import App

log = logging.getLogger("amqptasks.results")

#: Longest a publish waits for the reply thread to connect and the broker to confirm.
PUBLISH_TIMEOUT = 30.0


class _ReplyThread(threading.Thread):
    """One connection and channel: consumes the direct reply-to and publishes the tasks expecting replies."""

    def __init__(self, backend: RpcBackend) -> None:
        super().__init__(name="amqptasks-rpc-results", daemon=True)
        self.backend = backend
        self.ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.connection: Any = None
        self.channel: Any = None
        self.stopping = False

    def run(self) -> None:
        app = self.backend.app
        try:
            self.connection = open_blocking(
                BrokerURL.parse(app.config.broker.url), connection_name="amqptasks results (rpc)",
                tls=tls_options(app.config.broker), heartbeat=app.config.broker.heartbeat,
            )  # fmt: skip
            self.channel = self.connection.channel()
            self.channel.confirm_delivery()
            self.channel.basic_consume(DIRECT_REPLY_TO, self._on_reply, auto_ack=True)
        except Exception as exc:
            self.ready.set_exception(exc)
            return
        self.ready.set_result(None)
        try:
            while not self.stopping:
                self.connection.process_data_events(time_limit=1)
        except Exception as exc:  # connection lost: the next publish starts a new thread
            if not self.stopping:
                log.warning("rpc results connection lost (%r); results still due on it are lost", exc)
        finally:
            self.stopping = True
            try:
                if self.connection.is_open:
                    self.connection.close()
            except Exception:
                log.debug("closing the rpc results connection failed", exc_info=True)

    def _on_reply(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        try:
            self.backend.book.add(decode(body))
        except ValueError:
            log.warning("ignored a reply that is not a result state message (correlation_id=%s)",
                        properties.correlation_id)  # fmt: skip

    def call(self, fn: Callable[[], None]) -> None:
        """Run *fn* in this thread (it owns the channel) and wait for it."""
        done: concurrent.futures.Future[None] = concurrent.futures.Future()

        def run() -> None:
            try:
                fn()
            except BaseException as exc:
                done.set_exception(exc)
            else:
                done.set_result(None)

        self.connection.add_callback_threadsafe(run)
        done.result(PUBLISH_TIMEOUT)

    def stop(self) -> None:
        self.stopping = True
        if self.connection is not None and self.connection.is_open:
            with contextlib.suppress(Exception):
                self.connection.add_callback_threadsafe(lambda: None)  # wakes process_data_events


class RpcBackend(ResultBackend):
    uses_reply_to = True
    url = "rpc://"

    def __init__(self, app: App) -> None:
        self.app = app
        self.book = StateBook()
        self._thread: _ReplyThread | None = None
        self._lock = threading.Lock()

    def _reply_thread(self) -> _ReplyThread:
        with self._lock:
            if self._thread is None or self._thread.stopping:
                self._thread = _ReplyThread(self)
                self._thread.start()
            thread = self._thread
        thread.ready.result(PUBLISH_TIMEOUT)
        return thread

    # --- caller side -------------------------------------------------------------------------------------

    def publish(self, envelope: Envelope) -> None:
        thread = self._reply_thread()

        def send() -> None:
            properties = pika.BasicProperties(**envelope.properties())
            try:
                thread.channel.basic_publish(envelope.exchange, envelope.routing_key, envelope.body, properties,
                                             mandatory=envelope.mandatory)  # fmt: skip
            except pika.exceptions.UnroutableError:
                raise errors.UnroutableError(envelope.exchange, envelope.routing_key) from None
            except pika.exceptions.NackError:
                raise errors.PublishNacked(f"the broker refused {envelope.describe()} (basic.nack)") from None
            except pika.exceptions.AMQPError as exc:
                raise errors.PublishError(f"cannot publish {envelope.describe()}: {exc!r}") from None

        thread.call(send)

    def peek(self, task_id: str) -> dict[str, Any] | None:
        return self.book.latest(task_id)

    def wait(
        self, task_id: str, timeout: float | None, interval: float, on_message: OnMessage | None
    ) -> dict[str, Any]:
        if self._thread is None and self.book.latest(task_id) is None:
            # No reply channel was ever opened here: nothing published from this process, so no state can come.
            raise errors.ResultUnavailable(
                f"task {task_id}: rpc:// results go only to the process that published the task, and this process "
                "has published none, so this result can never arrive here. Wait for it where it was published, or "
                "keep results in a store readable from anywhere (YAML 'results: {backend: redis://...}')"
            )
        return self.book.wait(task_id, timeout, on_message)

    def forget(self, task_id: str) -> None:
        self.book.forget(task_id)

    def close(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.stop()
            thread.join(5)

    # --- worker side -------------------------------------------------------------------------------------

    def store(self, task_id: str, meta: dict[str, Any], reply_to: str | None) -> None:
        if reply_to:
            self.app.publisher.publish(_reply(task_id, meta, reply_to))

    async def astore(self, task_id: str, meta: dict[str, Any], reply_to: str | None) -> None:
        if reply_to:
            publisher = await self.app.aio_publisher()
            await publisher.publish(_reply(task_id, meta, reply_to))


class Unreachable(ResultBackend):
    """The backend of results that cannot come back by rpc:// (``publish_many`` does not publish on the reply
    channel): reading one says why at once instead of waiting for a timeout."""

    uses_reply_to = True
    url = "rpc://"

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def peek(self, task_id: str) -> dict[str, Any] | None:
        return None

    def wait(
        self, task_id: str, timeout: float | None, interval: float, on_message: OnMessage | None
    ) -> dict[str, Any]:
        raise errors.ResultUnavailable(f"task {task_id}: {self.reason}")

    def forget(self, task_id: str) -> None:
        return None

    def close(self) -> None:
        return None


def _reply(task_id: str, meta: dict[str, Any], reply_to: str) -> Envelope:
    # Not mandatory, not persistent: a reply-to whose publisher has gone is dropped by the broker, as it should.
    return Envelope("", reply_to, encode(meta), correlation_id=task_id, delivery_mode=1, mandatory=False)
