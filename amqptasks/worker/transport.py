"""The worker's line to RabbitMQ: pika's asyncio adapter, on the worker's own event loop.

Why not aio-pika here: profiled, aiormq's frame parsing plus one asyncio task and one socket write per
delivery and per ack cost the worker more than its tasks did (about 100 µs a message). pika parses a
delivery in about 25 µs. It runs on the worker's loop rather than in a thread of its own: a consumer thread
was tried, and waiting for the GIL after every hand-off between the two threads cost as much again.

Two more savings come from batching:

- deliveries reach the worker in batches, one call per turn of the loop;
- acknowledgements are coalesced (:mod:`amqptasks.worker.acks`): a run of settled delivery tags with no gap
  below it is acknowledged with one ``basic.ack(multiple=True)``.

Connection or channel lost: the transport reconnects with backoff, checks the queues again and re-consumes.
The deliveries of the old channel are *stale*: the broker has requeued them, so the worker must neither run
them (if not started) nor try to settle them (:meth:`Transport.is_stale`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pika
import pika.channel
import pika.exceptions
from pika.adapters.asyncio_connection import AsyncioConnection

from amqptasks.broker.connection import connect_error, pika_parameters, tls_options
from amqptasks.broker.logs import why_closed
from amqptasks.broker.url import BrokerURL
from amqptasks.config.model import Broker
from amqptasks.errors import AmqpTasksError
from amqptasks.worker.acks import Acks
from amqptasks.worker.pika_steps import STEP_TIMEOUT_S, Lost, Steps, queue_exists, resolve

__all__ = ["Incoming", "Transport"]

log = logging.getLogger("amqptasks.worker")

RECONNECT_MIN_S, RECONNECT_MAX_S = 0.5, 5.0
#: A consuming connection that received nothing this long is probed; unanswered this long again, it is dropped.
LIVENESS_S = 10.0
#: While the broker stays unreachable: a first line after this long, then one every STILL_DOWN_LOG_S.
FIRST_DOWN_LOG_S, STILL_DOWN_LOG_S = 5.0, 30.0

T = TypeVar("T")


@dataclass(slots=True)
class Incoming:
    """One delivery, as the broker sent it (only what the worker reads)."""

    body: bytes
    headers: dict[str, Any] | None
    content_type: str | None
    content_encoding: str | None
    correlation_id: str | None
    reply_to: str | None
    priority: int | None
    redelivered: bool
    exchange: str
    routing_key: str
    delivery_tag: int
    queue: str
    #: Which channel it came on (a counter): settling it on a later channel would settle another message.
    channel: int


def missing_queue(queue: str) -> AmqpTasksError:
    return AmqpTasksError(
        f"queue {queue!r} does not exist on the broker; declare it in the YAML and run "
        "'amqptasks topology apply', or check the -Q names"
    )


class Transport:
    """Consumes *queues* with *prefetch*; hands batches of :class:`Incoming` to *on_batch*, on *loop*."""

    def __init__(
        self,
        broker: Broker,
        name: str,
        queues: Sequence[str],
        prefetch: int,
        on_batch: Callable[[list[Incoming]], None],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.broker, self.name, self.queues, self.prefetch = broker, name, list(queues), prefetch
        self._url = BrokerURL.parse(broker.url)
        self._on_batch, self._loop = on_batch, loop
        self._connection: AsyncioConnection | None = None
        self._channel: pika.channel.Channel | None = None
        self._channel_id = 0
        self._consumer_tags: list[str] = []
        self._consumed: dict[str, str] = {}  # consumer tag -> queue
        self._waiting: set[asyncio.Task[None]] = set()  # queues deleted while consumed, waited for
        self._batch: list[Incoming] = []
        self._hand_over_scheduled = False
        self._acks = Acks(loop, prefetch, lambda: (self._channel, self._channel_id))
        self._consuming = True
        self._closing = False
        self.connected = False
        self._steps = Steps(loop)  # steps in progress: failed when the channel is lost
        self._reconnecting: asyncio.Task[None] | None = None
        self._closed_future: asyncio.Future[None] | None = None
        self._started = False  # reconnecting starts after the first success: a failed start() just raises
        self._lost_at = 0.0  # when the connection (or the consuming channel) was last lost, loop time
        self._watching: asyncio.Task[None] | None = None
        self._stalled: str | None = None  # why the watchdog gave up on the current connection
        self._node, self._attempts = 0, 0  # which of the URL's nodes (amqp://h1;amqp://h2) the next attempt uses

    # --- the worker's side --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and consume; raises :class:`AmqpTasksError` saying why (unreachable broker, missing queue,
        refused access...)."""
        for attempt in range(len(self._url.nodes())):  # each node once: the first that answers
            try:
                await self._connect()
                break
            except (Lost, TimeoutError, pika.exceptions.AMQPError) as exc:
                if attempt + 1 < len(self._url.nodes()):
                    continue
                reason = str(exc) or f"no answer within {STEP_TIMEOUT_S:g} s"
            raise AmqpTasksError(
                f"cannot consume {', '.join(map(repr, self.queues))} on {self._url.masked()}: {reason} "
                "(check the user's permissions on these queues and the broker's log)"
            ) from None
        self._started = True
        self._watching = self._loop.create_task(self._watch())

    def is_stale(self, incoming: Incoming) -> bool:
        """Its channel is gone: the broker has requeued it and will deliver it again."""
        return incoming.channel != self._channel_id or not self.connected

    def settle(self, incoming: Incoming, how: str) -> None:
        """ "ack", "reject" (dead-letter) or "requeue". Rejects and requeues go at the end of this turn of the
        loop; acks within :data:`~amqptasks.worker.acks.ACK_BATCH_S`, or with them, or once a quarter of the
        prefetch is waiting."""
        self._acks.settle(how, incoming.delivery_tag, incoming.channel)

    def flush(self) -> None:
        """Send every settlement held, now (into the socket: a process that dies next still delivers them)."""
        self._acks.flush(final=True)

    async def cancel(self) -> None:
        """Stop consuming: the broker sends nothing more; deliveries already here stay in the worker's hands."""
        self._consuming = False
        channel, tags, self._consumer_tags = self._channel, self._consumer_tags, []
        if channel is None or not channel.is_open:
            return
        try:
            for tag in (t for t in tags if t in channel.consumer_tags):  # not those the broker cancelled
                await self._steps.run(lambda done, tag=tag: channel.basic_cancel(tag, callback=done))  # type: ignore[misc]
        except (Lost, TimeoutError, pika.exceptions.AMQPError):
            log.debug("cancelling the consumers failed; the connection is going anyway", exc_info=True)
        self._hand_over()

    async def close(self) -> None:
        """Send every settlement still held, then close the connection (the broker requeues the rest)."""
        self._closing = True
        if self._watching is not None:
            self._watching.cancel()
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        for waiting in self._waiting:
            waiting.cancel()
        self._acks.flush(final=True)
        connection = self._connection
        if connection is None or connection.is_closed:
            return
        closed = self._closed_future = self._loop.create_future()
        with contextlib.suppress(pika.exceptions.ConnectionWrongStateError):
            connection.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(closed, 10.0)

    # --- connecting -----------------------------------------------------------------------------------------

    async def _connect(self) -> None:
        # A cluster's nodes in turn: every attempt after the first goes to the next one (the one before did not
        # answer, or its connection was lost).
        nodes = self._url.nodes()
        if self._attempts:
            self._node = (self._node + 1) % len(nodes)
        self._attempts += 1
        parameters = pika_parameters(
            nodes[self._node], heartbeat=self.broker.heartbeat, connection_name=self.name, tls=tls_options(self.broker)
        )
        opened: asyncio.Future[AsyncioConnection] = self._loop.create_future()

        def on_error(_connection: Any, error: BaseException | str) -> None:
            if not opened.done():
                exc = error if isinstance(error, BaseException) else pika.exceptions.AMQPConnectionError(error)
                exc = (getattr(exc, "exceptions", None) or [exc])[-1]  # a workflow failure holds its attempts
                opened.set_exception(connect_error(self._url, exc))

        self._connection = AsyncioConnection(
            parameters,
            on_open_callback=lambda c: resolve(opened, c),
            on_open_error_callback=on_error,
            on_close_callback=self._on_connection_closed,
            custom_ioloop=self._loop,
        )
        try:
            await asyncio.wait_for(asyncio.shield(opened), STEP_TIMEOUT_S)
            await self._open_channel()
        except BaseException:
            connection, self._connection = self._connection, None
            if connection is not None and connection.is_open:
                with contextlib.suppress(pika.exceptions.AMQPError):
                    connection.close()
            raise

    async def _open_channel(self) -> None:
        connection = self._connection
        assert connection is not None
        channel: pika.channel.Channel = await self._steps.run(lambda done: connection.channel(on_open_callback=done))
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_cancel_callback(self._on_consumer_cancelled)
        self._channel = channel
        await self._steps.run(lambda done: channel.basic_qos(prefetch_count=self.prefetch, callback=done))
        for queue in self.queues:
            try:
                await self._steps.run(lambda done, q=queue: channel.queue_declare(q, passive=True, callback=done))  # type: ignore[misc]
            except Lost as lost:
                if "404" in str(lost) or "NOT_FOUND" in str(lost):
                    raise missing_queue(queue) from None
                raise
        self._channel_id += 1
        self._acks.reset()
        self._consumer_tags, self._consumed = [], {}
        if self._consuming:
            for queue in self.queues:
                self._consume(channel, queue)
        self.connected = True

    def _consume(self, channel: pika.channel.Channel, queue: str) -> None:
        tag = channel.basic_consume(queue, self._make_callback(queue, self._channel_id))
        self._consumer_tags.append(tag)
        self._consumed[tag] = queue

    def _on_consumer_cancelled(self, frame: Any) -> None:
        """The broker cancelled a consumer: its queue was deleted. The channel and the deliveries in hand stay
        valid; the queue is consumed again once it exists again (e.g. after ``amqptasks topology apply``)."""
        tag = str(frame.method.consumer_tag)
        queue = self._consumed.pop(tag, None)
        if tag in self._consumer_tags:
            self._consumer_tags.remove(tag)
        if queue is None or self._closing or not self._consuming:
            return
        log.warning("queue %r is gone (the broker cancelled its consumer); consuming it again once it exists", queue)
        self._waiting.add(self._loop.create_task(self._consume_again(queue, self._channel_id)))

    async def _consume_again(self, queue: str, channel_id: int) -> None:
        attempt = 0
        while not self._closing and self._consuming and channel_id == self._channel_id:
            await asyncio.sleep(min(RECONNECT_MAX_S, RECONNECT_MIN_S * 2**attempt))
            attempt += 1
            connection, channel = self._connection, self._channel
            if connection is None or channel is None or not channel.is_open:
                return  # a new channel consumes every queue again
            try:
                if not await queue_exists(self._loop, connection, queue):
                    continue
            except (TimeoutError, pika.exceptions.AMQPError):
                continue
            if channel_id == self._channel_id and channel.is_open and self._consuming:
                self._consume(channel, queue)
                log.info("queue %r is back: consuming it again", queue)
            return

    def _on_channel_closed(self, channel: pika.channel.Channel, reason: BaseException) -> None:
        self._steps.fail(reason)
        if channel is not self._channel:
            return
        self.connected = False
        self._channel = None
        if self._closing or not self._started or self._connection is None or not self._connection.is_open:
            return
        # Closed by the broker (e.g. consumer_timeout's PRECONDITION_FAILED); it requeued its deliveries.
        self._lost_at = self._loop.time()
        log.warning("the consuming channel was closed by the broker (%s); reopening it", reason)
        self._start_reconnecting(channel_only=True)

    def _on_connection_closed(self, _connection: Any, reason: BaseException) -> None:
        self._steps.fail(reason)
        self.connected = False
        self._channel = None
        if self._closed_future is not None and not self._closed_future.done():
            self._closed_future.set_result(None)
        if self._closing or not self._started or _connection is not self._connection:
            return
        self._connection = None
        self._lost_at = self._loop.time()
        stalled, self._stalled = self._stalled, None
        log.warning("connection to the broker lost: %s; reconnecting (the messages in hand go back to their queues)",
                    stalled or why_closed(reason))  # fmt: skip
        self._start_reconnecting(channel_only=False)

    async def _watch(self) -> None:
        """Our own liveness check: a connection that received nothing for LIVENESS_S gets a probe (a ``basic.qos``,
        answered at once by a live broker); no answer within LIVENESS_S means the broker stopped answering (a
        frozen VM, a SIGSTOPped node, a black-holed network, which heartbeats of 60 s take minutes to notice):
        the connection is dropped and the usual reconnecting takes over. Idle costs one round trip per period."""
        quiet_since, seen = self._loop.time(), -1
        while not self._closing:
            await asyncio.sleep(LIVENESS_S / 2)
            connection, channel = self._connection, self._channel
            if connection is None or channel is None or not channel.is_open or not self.connected:
                seen = -1
                continue
            now = self._loop.time()
            if connection.bytes_received != seen:
                quiet_since, seen = now, connection.bytes_received
                continue
            if now - quiet_since < LIVENESS_S:
                continue
            try:
                probe = self._steps.run(
                    lambda done, ch=channel: ch.basic_qos(prefetch_count=self.prefetch, callback=done)  # type: ignore[misc]
                )
                await asyncio.wait_for(probe, LIVENESS_S)
                continue
            except TimeoutError:
                pass
            except (Lost, pika.exceptions.AMQPError):
                continue  # the channel or connection went: its own callbacks deal with it
            if connection is self._connection and connection is not None and not self._closing:
                silent = now - quiet_since + LIVENESS_S
                self._stalled = f"the broker stopped answering (nothing received for {silent:.0f} s)"
                # What pika's own heartbeat checker does: drop the stream; the close callback reconnects.
                connection._terminate_stream(pika.exceptions.AMQPHeartbeatTimeout(self._stalled))
            quiet_since, seen = self._loop.time(), -1

    def _start_reconnecting(self, *, channel_only: bool) -> None:
        if self._reconnecting is None or self._reconnecting.done():
            self._reconnecting = self._loop.create_task(self._reconnect(channel_only))

    async def _reconnect(self, channel_only: bool) -> None:
        attempt = 0
        said_at = self._loop.time() - STILL_DOWN_LOG_S + FIRST_DOWN_LOG_S  # the first failures are quick retries
        while not self._closing:
            try:
                connection = self._connection
                if channel_only and connection is not None and connection.is_open:
                    await self._open_channel()
                else:
                    self._connection = None  # its close callback then finds it is not the current one
                    if connection is not None and connection.is_open:
                        with contextlib.suppress(pika.exceptions.AMQPError):
                            connection.close()
                    await self._connect()
                down = self._loop.time() - self._lost_at
                log.info("consuming %s again, %.2f s after the connection was lost", ", ".join(self.queues), down)
                return
            except (AmqpTasksError, Lost, TimeoutError, pika.exceptions.AMQPError, OSError) as exc:
                # One line now, then one every STILL_DOWN_LOG_S: an outage of an hour is not 700 lines.
                now = self._loop.time()
                if now >= said_at + STILL_DOWN_LOG_S:
                    said_at = now
                    reason = str(exc) or f"no answer within {STEP_TIMEOUT_S:g} s"
                    log.warning("still cannot reach the broker %.0f s after the connection was lost (%s); retrying "
                                "every %g s", now - self._lost_at, reason, RECONNECT_MAX_S)  # fmt: skip
                channel_only = False
            await asyncio.sleep(min(RECONNECT_MAX_S, RECONNECT_MIN_S * 2**attempt))
            attempt += 1

    # --- deliveries ------------------------------------------------------------------------------------------

    def _make_callback(self, queue: str, channel_id: int) -> Callable[..., None]:
        batch = self._batch

        def on_message(
            _ch: pika.channel.Channel, method: Any, properties: pika.BasicProperties, body: bytes
        ) -> None:  # fmt: skip
            batch.append(Incoming(
                body, properties.headers, properties.content_type, properties.content_encoding,
                properties.correlation_id, properties.reply_to, properties.priority, bool(method.redelivered),
                method.exchange or "", method.routing_key or "", method.delivery_tag, queue, channel_id,
            ))  # fmt: skip
            if not self._hand_over_scheduled:
                self._hand_over_scheduled = True
                self._loop.call_soon(self._hand_over)

        return on_message

    def _hand_over(self) -> None:
        self._hand_over_scheduled = False
        if self._batch:
            batch = self._batch[:]
            self._batch.clear()  # the same list object: the consumer callbacks append to it
            self._on_batch(batch)
