"""The worker's settlements on their way to the broker: acknowledgements coalesced, rejects sent at once.

Acknowledgements wait up to :data:`ACK_BATCH_S` (or until a quarter of the prefetch is waiting), then a run
of settled delivery tags with no gap below it is acknowledged with one ``basic.ack(multiple=True)``. An ack
above a gap (a slow task still holds a lower tag) waits at most :data:`ACK_HOLD_S`, then goes alone. Rejects
and requeues are sent at once, before any ack that covers them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pika.channel

#: An acknowledgement above a gap waits for the gap to close at most this long before it is sent alone.
ACK_HOLD_S = 0.2
#: Acks are sent at most this long after their task finished (sooner once a quarter of the prefetch waits).
ACK_BATCH_S = 0.005
#: A held ack this close to its ACK_HOLD_S is sent with the others rather than on a timer of its own.
_TIMER_SLACK_S = 0.002


class Acks:
    """The settlements of a consumer with *prefetch*, on *loop*. *current* tells the consuming channel (None
    while there is none) and its number: a settlement is sent only on the channel its delivery came on."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        prefetch: int,
        current: Callable[[], tuple[pika.channel.Channel | None, int]],
    ) -> None:
        self._loop, self._current = loop, current
        # Settlements not sent yet: (how, tag, channel).
        self._ops: list[tuple[str, int, int]] = []
        self._flush_scheduled = False
        self._hold_timer: asyncio.TimerHandle | None = None
        self._batch_timer: asyncio.TimerHandle | None = None
        self._flush_after = max(1, prefetch // 4)  # this many settlements waiting: send them now
        self._floor = 0  # every tag up to here is settled on the broker
        self._done: set[int] = set()  # settled tags above the floor (their ack may still be held)
        self._held: dict[int, float] = {}  # acks not sent yet: tag -> when it was settled

    def reset(self) -> None:
        """A new channel: its delivery tags start again from 1, and the old one's settlements are void."""
        self._floor, self._done, self._held, self._ops = 0, set(), {}, []

    def settle(self, how: str, tag: int, channel: int) -> None:
        """Delivery *tag* of channel number *channel*: "ack", "reject" or "requeue" (see ``Transport.settle``)."""
        self._ops.append((how, tag, channel))
        if self._flush_scheduled:
            return
        if how == "ack" and len(self._ops) < self._flush_after:
            # Each send is a system call (and a chance for a task thread to take the GIL): acks share one.
            if self._batch_timer is None:
                self._batch_timer = self._loop.call_later(ACK_BATCH_S, self.flush)
            return
        self._flush_scheduled = True
        self._loop.call_soon(self.flush)

    def flush(self, final: bool = False) -> None:
        """Send what is due; *final*: every held ack too."""
        self._flush_scheduled = False
        if self._batch_timer is not None:
            self._batch_timer.cancel()
            self._batch_timer = None
        channel, current = self._current()
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
        self.flush()
