"""The worker's line to RabbitMQ: pika's asyncio adapter, on the worker's own event loop.

Why not aio-pika here: profiled, aiormq's frame parsing plus one asyncio task and one socket write per
delivery and per ack cost the worker more than its tasks did (about 100 µs a message). pika parses a
delivery in about 25 µs. It runs on the worker's loop rather than in a thread of its own: a consumer thread
was tried, and waiting for the GIL after every hand-off between the two threads cost as much again.

Two more savings come from batching:

- deliveries reach the worker in batches, one call per turn of the loop;
- acknowledgements are coalesced: they wait up to :data:`ACK_BATCH_S` (or until a quarter of the prefetch is
  waiting), then a run of settled delivery tags with no gap below it is acknowledged with one
  ``basic.ack(multiple=True)``. An ack above a gap (a slow task still holds a
  lower tag) waits at most :data:`ACK_HOLD_S`, then goes alone. Rejects and requeues are sent at once,
  before any ack that covers them.

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

from amqptasks.broker import pika_floats  # noqa: F401  (float headers)
from amqptasks.broker.connection import connect_error, pika_parameters, tls_options
from amqptasks.broker.url import BrokerURL
from amqptasks.config.model import Broker
from amqptasks.errors import AmqpTasksError

log = logging.getLogger("amqptasks.worker")

#: An acknowledgement above a gap waits for the gap to close at most this long before it is sent alone.
ACK_HOLD_S = 0.2
#: Acks are sent at most this long after their task finished (sooner once a quarter of the prefetch waits).
ACK_BATCH_S = 0.005
#: A held ack this close to its ACK_HOLD_S is sent with the others rather than on a timer of its own.
_TIMER_SLACK_S = 0.002
RECONNECT_MIN_S, RECONNECT_MAX_S = 0.5, 5.0
#: How long one step of connecting (open, channel, declare, consume) may take.
STEP_TIMEOUT_S = 30.0

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


class _Lost(Exception):
    """The channel or connection closed while connecting."""


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
        # Settlements not sent yet: (how, tag, channel).
        self._ops: list[tuple[str, int, int]] = []
        self._flush_scheduled = False
        self._hold_timer: asyncio.TimerHandle | None = None
        self._batch_timer: asyncio.TimerHandle | None = None
        self._flush_after = max(1, prefetch // 4)  # this many settlements waiting: send them now
        self._floor = 0  # every tag up to here is settled on the broker
        self._done: set[int] = set()  # settled tags above the floor (their ack may still be held)
        self._held: dict[int, float] = {}  # acks not sent yet: tag -> when it was settled
        self._consuming = True
        self._closing = False
        self.connected = False
        self._pending: set[asyncio.Future[Any]] = set()  # steps in progress: failed when the channel is lost
        self._reconnecting: asyncio.Task[None] | None = None
        self._closed_future: asyncio.Future[None] | None = None
        self._started = False  # reconnecting starts after the first success: a failed start() just raises

    # --- the worker's side --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and consume; raises :class:`AmqpTasksError` saying why (unreachable broker, missing queue,
        refused access...)."""
        try:
            await self._connect()
        except (_Lost, TimeoutError, pika.exceptions.AMQPError) as exc:
            reason = str(exc) or f"no answer within {STEP_TIMEOUT_S:g} s"
            raise AmqpTasksError(
                f"cannot consume {', '.join(map(repr, self.queues))} on {self._url.masked()}: {reason} "
                "(check the user's permissions on these queues and the broker's log)"
            ) from None
        self._started = True

    def is_stale(self, incoming: Incoming) -> bool:
        """Its channel is gone: the broker has requeued it and will deliver it again."""
        return incoming.channel != self._channel_id or not self.connected

    def settle(self, incoming: Incoming, how: str) -> None:
        """ "ack", "reject" (dead-letter) or "requeue". Rejects and requeues go at the end of this turn of the
        loop; acks within :data:`ACK_BATCH_S`, or with them, or once a quarter of the prefetch is waiting."""
        self._ops.append((how, incoming.delivery_tag, incoming.channel))
        if self._flush_scheduled:
            return
        if how == "ack" and len(self._ops) < self._flush_after:
            # Each send is a system call (and a chance for a task thread to take the GIL): acks share one.
            if self._batch_timer is None:
                self._batch_timer = self._loop.call_later(ACK_BATCH_S, self._flush)
            return
        self._flush_scheduled = True
        self._loop.call_soon(self._flush)

    async def cancel(self) -> None:
        """Stop consuming: the broker sends nothing more; deliveries already here stay in the worker's hands."""
        self._consuming = False
        channel, tags, self._consumer_tags = self._channel, self._consumer_tags, []
        if channel is None or not channel.is_open:
            return
        try:
            for tag in (t for t in tags if t in channel.consumer_tags):  # not those the broker cancelled
                await self._step(lambda done, tag=tag: channel.basic_cancel(tag, callback=done))  # type: ignore[misc]
        except (_Lost, TimeoutError, pika.exceptions.AMQPError):
            log.debug("cancelling the consumers failed; the connection is going anyway", exc_info=True)
        self._hand_over()

    async def close(self) -> None:
        """Send every settlement still held, then close the connection (the broker requeues the rest)."""
        self._closing = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        for waiting in self._waiting:
            waiting.cancel()
        self._flush(final=True)
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
        parameters = pika_parameters(
            self._url, heartbeat=self.broker.heartbeat, connection_name=self.name, tls=tls_options(self.broker)
        )
        opened: asyncio.Future[AsyncioConnection] = self._loop.create_future()

        def on_error(_connection: Any, error: BaseException | str) -> None:
            if not opened.done():
                exc = error if isinstance(error, BaseException) else pika.exceptions.AMQPConnectionError(error)
                exc = (getattr(exc, "exceptions", None) or [exc])[-1]  # a workflow failure holds its attempts
                opened.set_exception(connect_error(self._url, exc))

        self._connection = AsyncioConnection(
            parameters,
            on_open_callback=lambda c: _resolve(opened, c),
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
        channel: pika.channel.Channel = await self._step(lambda done: connection.channel(on_open_callback=done))
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_cancel_callback(self._on_consumer_cancelled)
        self._channel = channel
        await self._step(lambda done: channel.basic_qos(prefetch_count=self.prefetch, callback=done))
        for queue in self.queues:
            try:
                await self._step(lambda done, q=queue: channel.queue_declare(q, passive=True, callback=done))  # type: ignore[misc]
            except _Lost as lost:
                if "404" in str(lost) or "NOT_FOUND" in str(lost):
                    raise AmqpTasksError(
                        f"queue {queue!r} does not exist on the broker; declare it in the YAML and run "
                        "'amqptasks topology apply', or check the -Q names"
                    ) from None
                raise
        self._channel_id += 1
        self._floor, self._done, self._held, self._ops = 0, set(), {}, []
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
                if not await self._exists(connection, queue):
                    continue
            except (TimeoutError, pika.exceptions.AMQPError):
                continue
            if channel_id == self._channel_id and channel.is_open and self._consuming:
                self._consume(channel, queue)
                log.info("queue %r is back: consuming it again", queue)
            return

    async def _step(self, call: Callable[[Callable[..., None]], Any]) -> Any:
        """One asynchronous pika call: its callback's argument, or :class:`_Lost` if the channel goes first."""
        future: asyncio.Future[Any] = self._loop.create_future()
        self._pending.add(future)
        try:
            call(lambda result=None: _resolve(future, result))
            return await asyncio.wait_for(future, STEP_TIMEOUT_S)
        finally:
            self._pending.discard(future)

    def _fail_pending(self, reason: BaseException | str) -> None:
        for future in list(self._pending):
            if not future.done():
                future.set_exception(_Lost(str(reason)))

    def _on_channel_closed(self, channel: pika.channel.Channel, reason: BaseException) -> None:
        self._fail_pending(reason)
        if channel is not self._channel:
            return
        self.connected = False
        self._channel = None
        if self._closing or not self._started or self._connection is None or not self._connection.is_open:
            return
        # Closed by the broker (e.g. consumer_timeout's PRECONDITION_FAILED); it requeued its deliveries.
        log.warning("the consuming channel was closed by the broker (%s); reopening it", reason)
        self._start_reconnecting(channel_only=True)

    def _on_connection_closed(self, _connection: Any, reason: BaseException) -> None:
        self._fail_pending(reason)
        self.connected = False
        self._channel = None
        if self._closed_future is not None and not self._closed_future.done():
            self._closed_future.set_result(None)
        if self._closing or not self._started or _connection is not self._connection:
            return
        self._connection = None
        log.warning("connection to the broker lost (%s); reconnecting", reason)
        self._start_reconnecting(channel_only=False)

    def _start_reconnecting(self, *, channel_only: bool) -> None:
        if self._reconnecting is None or self._reconnecting.done():
            self._reconnecting = self._loop.create_task(self._reconnect(channel_only))

    async def _reconnect(self, channel_only: bool) -> None:
        attempt = 0
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
                log.info("consuming %s again", ", ".join(self.queues))
                return
            except (AmqpTasksError, _Lost, TimeoutError, pika.exceptions.AMQPError, OSError) as exc:
                log.warning("reconnecting failed (%s); trying again", exc)
                channel_only = False
            await asyncio.sleep(min(RECONNECT_MAX_S, RECONNECT_MIN_S * 2**attempt))
            attempt += 1

    async def _exists(self, connection: AsyncioConnection, queue: str) -> bool:
        """Whether *queue* exists, asked on a channel of its own: a passive declare of a missing queue closes it."""
        opened: asyncio.Future[pika.channel.Channel] = self._loop.create_future()
        connection.channel(on_open_callback=lambda ch: _resolve(opened, ch))
        probe = await asyncio.wait_for(opened, STEP_TIMEOUT_S)
        answer: asyncio.Future[bool] = self._loop.create_future()
        probe.add_on_close_callback(lambda _ch, _reason: _resolve(answer, False))
        probe.queue_declare(queue, passive=True, callback=lambda _frame: _resolve(answer, True))
        exists = await asyncio.wait_for(answer, STEP_TIMEOUT_S)
        if probe.is_open:
            probe.close()
        return exists

    # --- deliveries and settlements ---------------------------------------------------------------------------

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

    def _flush(self, final: bool = False) -> None:
        self._flush_scheduled = False
        if self._batch_timer is not None:
            self._batch_timer.cancel()
            self._batch_timer = None
        channel, current = self._channel, self._channel_id
        ops, self._ops = self._ops, []
        if channel is None or not channel.is_open:
            return  # the broker requeued them with the channel
        now = self._loop.time()
        for how, tag, channel_id in ops:
            if channel_id != current or tag <= self._floor or tag in self._done:
                continue  # an old channel's delivery (already requeued by the broker), or settled already
            self._done.add(tag)
            if how == "ack":
                self._held[tag] = now
            elif how == "reject":
                channel.basic_reject(tag, requeue=False)
            else:
                channel.basic_nack(tag, multiple=False, requeue=True)
        top = self._floor
        while top + 1 in self._done:
            top += 1
        if top > self._floor:
            covered = [tag for tag in self._held if tag <= top]
            if covered:
                # The highest *held* ack, not *top*: a tag acked alone or rejected is unknown to the broker now.
                channel.basic_ack(max(covered), multiple=True)
            for tag in covered:
                del self._held[tag]
            for tag in range(self._floor + 1, top + 1):
                self._done.discard(tag)
            self._floor = top
        for tag, since in list(self._held.items()):
            if final or now - since >= ACK_HOLD_S - _TIMER_SLACK_S:
                channel.basic_ack(tag)
                del self._held[tag]
        if self._held and self._hold_timer is None:
            # Timers may fire a little early (uvloop counts in milliseconds): whatever is not due yet gets a
            # timer again, so no held ack is left waiting for some later settlement to send it.
            self._hold_timer = self._loop.call_at(min(self._held.values()) + ACK_HOLD_S, self._on_hold_timer)

    def _on_hold_timer(self) -> None:
        self._hold_timer = None
        self._flush()


def _resolve(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)
