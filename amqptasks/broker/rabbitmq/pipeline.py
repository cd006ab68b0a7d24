"""Pipelined publisher confirms on one pika channel: many messages in flight, every one accounted for.

pika's ``BlockingChannel.confirm_delivery()`` waits for each confirm before the next publish (~0.5 ms per
persistent message here). We drive the channel's underlying ``pika.channel.Channel`` instead: publish up to
``window`` messages, then let the connection's I/O loop run until enough of them are confirmed. Delivery tags are
numbered by the broker 1, 2, 3... per channel in publish order, so we number them the same way.

Not thread-safe (nor is pika): one ``ConfirmChannel`` per connection per thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import pika
import pika.adapters.blocking_connection
import pika.channel
import pika.exceptions
import pika.spec

from amqptasks import errors
from amqptasks.broker.outcome import Outcome
from amqptasks.broker.rabbitmq.frames import encode_publish
from amqptasks.message.envelope import Envelope

__all__ = ["ConfirmChannel", "ConfirmTimeout"]

log = logging.getLogger("amqptasks.publish.pipeline")

#: Hand encoded messages to the socket once this many bytes of them wait (large messages).
_FLUSH_BYTES = 4 * 1024 * 1024
#: Hand this many encoded messages to the socket at a time (one send(2) for all of them).
_STREAM_EVERY = 256

Item = tuple[int, Envelope]  # (position in the caller's batch, envelope)


class ConfirmTimeout(Exception):
    """Internal: confirms did not come within the timeout (the caller turns it into PublishTimeout)."""


class ConfirmChannel:
    """A channel in confirm mode that publishes a stream of envelopes and waits until each one is settled."""

    def __init__(
        self,
        connection: pika.BlockingConnection,
        *,
        confirm: bool = True,
        window: int = 10_000,
        window_bytes: int = 64 * 1024 * 1024,
        confirm_timeout: float | None = None,
    ) -> None:
        if window < 1 or window_bytes < 1:
            raise ValueError(f"window ({window}) and window_bytes ({window_bytes}) must be at least 1")
        self._connection = connection
        self._channel = connection.channel()
        # The pika.channel.Channel under the blocking wrapper: publishing on it does not wait for the confirm.
        self._impl: pika.channel.Channel = self._channel._impl
        self._confirm = confirm
        # Persistent messages are confirmed in batches, once written to disk: keeping the window nearly full (refill
        # a tenth at a time) gives the broker more to write per batch. Measured here: 2,000 messages refilled by
        # half ~16k msgs/s, 10,000 refilled by a tenth ~20k msgs/s.
        self._window = window
        self._window_bytes = window_bytes
        self._inflight_bytes = 0  # body bytes in flight: large messages fill the window sooner
        self._confirm_timeout = confirm_timeout
        self._inflight: dict[int, Item] = {}  # delivery tag -> message, until the broker settles it
        self._returned: set[int] = set()  # tags in flight that came back as basic.return (their ack follows)
        self._next_tag = 1
        self._oldest = 1  # lowest delivery tag that may still be in flight
        self._return_cursor = 1  # returns come in publish order: the next one is for this tag or a later one
        self._outcome = Outcome()
        self._pending: list[bytes] = []  # encoded messages not handed to pika yet (see _hand_over)
        self._pending_bytes = 0
        # The write path pika's own basic_publish ends in (private, stable across pika 1.x).
        self._emit: Callable[[list[bytes]], None] = self._impl.connection._output_marshaled_frames
        self._impl.add_on_return_callback(self._on_return)
        if confirm:
            selected: list[bool] = []
            self._impl.confirm_delivery(ack_nack_callback=self._on_confirm, callback=lambda _: selected.append(True))
            self._wait(lambda: bool(selected))

    @property
    def is_open(self) -> bool:
        return bool(self._channel.is_open)

    @property
    def blocking(self) -> pika.adapters.blocking_connection.BlockingChannel:
        """The pika channel itself, for what is not publishing (declares, ``basic_get``); a ``basic_publish`` on it
        would put the delivery tags out of step with ours."""
        return self._channel

    def consume(self, queue: str, callback: Callable[..., None]) -> None:
        """Consume *queue* with no acks on this channel; deliveries reach *callback* when the connection's events
        are processed (``process_data_events``), not inside :meth:`send`."""
        self._channel.basic_consume(queue, callback, auto_ack=True)

    @property
    def clean(self) -> bool:
        """No message in flight: the channel can serve the next call."""
        return not self._inflight

    def send(self, items: Iterator[Item], outcome: Outcome) -> None:
        """Publish every item and return once each is settled (recorded in ``outcome``).

        pika's transport exceptions propagate; ``unsettled()`` then lists what may need sending again.
        An envelope pika cannot encode stops the batch: the messages before it are settled first.
        """
        self._outcome = outcome
        inflight = self._inflight
        channel_number = self._impl.channel_number
        connection = self._impl.connection
        # Private but stable across pika 1.x, like _impl and _flush_output: the negotiated body size per frame.
        frame_max = connection._body_max_length + 8
        window, window_bytes = self._window, self._window_bytes
        target, target_bytes = window - max(1, window // 10), window_bytes - window_bytes // 10

        def room() -> bool:
            return len(inflight) <= target and self._inflight_bytes <= target_bytes

        while True:
            try:
                item = next(items)
            except StopIteration:
                break
            except Exception:  # the caller's iterable failed: settle what we sent before letting it through
                self._wait(lambda: not inflight)
                raise
            envelope = item[1]
            size = len(envelope.body)
            tag = self._next_tag
            inflight[tag] = item
            self._next_tag = tag + 1
            self._inflight_bytes += size
            if not self._impl.is_open:  # closed while we handed messages over: unsettled() keeps this one too
                self._raise_closed()
            try:
                frames = encode_publish(channel_number, envelope, frame_max)
            except Exception as exc:  # pika cannot encode it (header type, long routing key): nothing was sent
                del inflight[tag]
                self._next_tag = tag
                self._inflight_bytes -= size
                self._wait(lambda: not inflight)
                raise errors.PublishError(f"cannot send {envelope.describe()}: {_encode_problem(exc)}") from None
            self._pending.append(frames)
            self._pending_bytes += len(frames)
            if len(self._pending) >= _STREAM_EVERY or self._pending_bytes >= _FLUSH_BYTES:
                # Let the broker start on these (and its confirms come back) while the next ones are encoded;
                # this also bounds what waits in memory when messages are large.
                self._hand_over()
                self._connection.process_data_events(time_limit=0)
            if not self._confirm:
                del inflight[tag]
                self._inflight_bytes -= size
                outcome.confirmed += 1
            if len(inflight) >= window or self._inflight_bytes >= window_bytes:
                self._wait(room)
        self._wait(lambda: not inflight)

    def _hand_over(self) -> None:
        """Give pika the encoded messages, joined: its transport sends each buffer it is given with its own
        send(2), so they go as one buffer per hand-over, not one per message."""
        if self._pending:
            self._emit([b"".join(self._pending)])
            self._pending.clear()
            self._pending_bytes = 0

    def _raise_closed(self) -> NoReturn:
        """Raise why the channel is closed: the broker's ChannelClosedByBroker (404, 403, 406...) when it closed it,
        so the caller reports it with its hint instead of taking it for a lost connection and retrying."""
        reason: object = self._channel._closing_reason  # private but stable across pika 1.x, like _flush_output
        if isinstance(reason, pika.exceptions.ChannelClosedByBroker):
            raise reason
        raise pika.exceptions.ChannelWrongStateError("channel is closed")

    def unsettled(self) -> list[Item]:
        """Messages sent but not settled, in publish order (after a lost connection: send them again)."""
        return [self._inflight[tag] for tag in sorted(self._inflight)]

    def close(self) -> None:
        if self._channel.is_open:
            self._channel.close()

    # -- broker callbacks (run inside _wait, on this thread) ---------------------------------------------------
    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        tag: int = method.delivery_tag
        ok = isinstance(method, pika.spec.Basic.Ack)
        inflight, settle = self._inflight, self._settle
        if method.multiple:
            for each in range(self._oldest, tag + 1):
                item = inflight.pop(each, None)
                if item is not None:
                    settle(each, item, ok)
        else:
            item = inflight.pop(tag, None)
            if item is not None:
                settle(tag, item, ok)
        oldest, end = self._oldest, self._next_tag
        while oldest < end and oldest not in inflight:
            oldest += 1
        self._oldest = oldest

    def _settle(self, tag: int, item: Item, ok: bool) -> None:
        self._inflight_bytes -= len(item[1].body)
        if not ok:
            self._returned.discard(tag)
            self._outcome.nacked.append(item)
        elif tag in self._returned:
            # RabbitMQ acks unroutable messages too; the basic.return that came first makes it a failure.
            self._returned.discard(tag)
            self._outcome.returned.append(item)
        else:
            self._outcome.confirmed += 1

    def _on_return(
        self,
        _channel: pika.channel.Channel,
        method: pika.spec.Basic.Return,
        properties: pika.spec.BasicProperties,
        body: bytes,
    ) -> None:
        if not self._confirm:
            # Without confirms nothing tells us which call a late return belongs to: all we can do is say so.
            log.warning(
                "unroutable message returned by the broker (exchange %r, routing key %r) on a publisher without "
                "confirms: it was dropped",
                method.exchange,
                method.routing_key,
            )
            return
        # A return carries no delivery tag. It comes before the ack of its message and in publish order, so it
        # belongs to the first message in flight after the previous return that it matches.
        for tag in range(max(self._return_cursor, self._oldest), self._next_tag):
            item = self._inflight.get(tag)
            if item is None or tag in self._returned:
                continue
            envelope = item[1]
            if (
                envelope.exchange == method.exchange
                and envelope.routing_key == method.routing_key
                and envelope.correlation_id == properties.correlation_id
                and envelope.body == body
            ):
                self._returned.add(tag)
                self._return_cursor = tag + 1
                return
        self._outcome.stray_returns.append((method.exchange, method.routing_key))

    # -- waiting -----------------------------------------------------------------------------------------------
    def _wait(self, done: Callable[[], bool]) -> None:
        """Run the connection's I/O until ``done()``; raises pika's error if the channel or connection closes.
        What is still waiting to be handed to pika goes first: a wait for confirms of unsent messages never ends."""
        self._hand_over()
        # BlockingChannel._flush_output is pika's own wait loop (private, stable across pika 1.x): it flushes our
        # output, dispatches incoming frames to the callbacks above, and raises ChannelClosedByBroker or the
        # connection's error when either closes. process_data_events() would not wake up for impl callbacks.
        if self._confirm_timeout is None:
            self._channel._flush_output(done)
            return
        deadline = time.monotonic() + self._confirm_timeout
        # A no-op timer makes the poll wake up at the deadline even when no frame arrives.
        timer = self._connection.call_later(self._confirm_timeout, _noop)
        try:
            self._channel._flush_output(lambda: done() or time.monotonic() >= deadline)
        finally:
            self._connection.remove_timeout(timer)
        if not done():
            raise ConfirmTimeout(f"no publisher confirm within {self._confirm_timeout:g} s")


def _encode_problem(exc: Exception) -> str:
    if isinstance(exc, pika.exceptions.UnsupportedAMQPFieldException) and len(exc.args) > 1:
        value = repr(exc.args[1])
        return (
            f"a header value of type {type(exc.args[1]).__name__} cannot go in an AMQP table "
            f"({value[:80]}; use str, bytes, int, float, bool, None, Decimal, datetime, or lists and dicts of them)"
        )
    if isinstance(exc, pika.exceptions.ShortStringTooLong):
        return "the exchange, routing key or a string property is longer than 255 bytes"
    return f"{type(exc).__name__}: {exc}"


def _noop() -> None:
    pass
