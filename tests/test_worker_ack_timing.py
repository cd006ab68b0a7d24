"""When the worker's acknowledgements reach the broker (acks.py's coalescing), with the broker's side
replaced by a recorder of the frames the channel would send: what is checked is the timing logic alone."""

from __future__ import annotations

import asyncio

from amqptasks.config.model import Broker
from amqptasks.worker.acks import ACK_HOLD_S
from amqptasks.worker.transport import Incoming, Transport


class RecordingChannel:
    is_open = True

    def __init__(self) -> None:
        self.sent: list[tuple[str, int, bool]] = []

    def basic_ack(self, tag: int, multiple: bool = False) -> None:
        self.sent.append(("ack", tag, multiple))

    def basic_reject(self, tag: int, requeue: bool = True) -> None:
        self.sent.append(("reject", tag, requeue))

    def basic_nack(self, tag: int, multiple: bool = False, requeue: bool = True) -> None:
        self.sent.append(("nack", tag, requeue))


def delivery(tag: int) -> Incoming:
    return Incoming(b"[]", {}, "application/json", "utf-8", None, None, None, False, "", "q", tag, "q", 1)


async def consuming_transport() -> tuple[Transport, RecordingChannel]:
    transport = Transport(Broker(), "test", ["q"], 32, lambda batch: None, asyncio.get_running_loop())
    channel = RecordingChannel()
    transport._channel, transport._channel_id, transport.connected = channel, 1, True  # type: ignore[assignment]
    return transport, channel


def test_an_ack_above_a_gap_is_sent_even_when_its_timer_fires_early() -> None:
    async def scenario() -> list[tuple[str, int, bool]]:
        transport, channel = await consuming_transport()
        # Given tag 1 still running (unsettled) and tag 2 finished: its ack is held, waiting for the gap
        transport.settle(delivery(2), "ack")
        await asyncio.sleep(0.05)
        assert channel.sent == []
        # When the hold timer fires before the ack is due (event loops round timers, uvloop to milliseconds)
        timer = transport._acks._hold_timer
        assert timer is not None
        fire = timer._callback  # type: ignore[attr-defined]
        timer.cancel()
        fire()
        # Then the ack still goes out once it is due, with nothing else happening on the channel
        await asyncio.sleep(ACK_HOLD_S + 0.1)
        return channel.sent

    assert asyncio.run(scenario()) == [("ack", 2, False)]


def test_acks_without_a_gap_go_as_one_multiple_ack_and_a_late_low_tag_closes_the_gap() -> None:
    async def scenario() -> list[tuple[str, int, bool]]:
        transport, channel = await consuming_transport()
        for tag in (2, 3, 5):
            transport.settle(delivery(tag), "ack")
        transport.settle(delivery(4), "reject")
        await asyncio.sleep(0.02)
        transport.settle(delivery(1), "ack")  # the slow task ends before the hold expires
        await asyncio.sleep(0.02)
        return channel.sent

    # the reject goes at once; then tags 1-5 are all settled: one ack with multiple=True up to the highest ack
    assert asyncio.run(scenario()) == [("reject", 4, False), ("ack", 5, True)]
