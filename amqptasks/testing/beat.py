"""``tick_beat(app, seconds)``: the beat scheduler's entries, sent as the memory:// broker's clock moves ahead."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from amqptasks.beat.scheduler import Scheduler
from amqptasks.testing.drain import memory_broker

if TYPE_CHECKING:
    from amqptasks.app import App

__all__ = ["tick_beat"]


def tick_beat(app: App, seconds: float) -> list[tuple[str, datetime]]:
    """Move the clock *seconds* ahead, stopping at each scheduled run on the way to send it (as the leader would:
    same task ids ``beat:<entry>:<time>``); returns the (entry, scheduled time) pairs sent, in order.

    The beat lock is not taken: only this process can reach a memory:// broker. Run ``drain(app)`` after it to
    run what was sent.
    """
    broker = memory_broker(app)
    app._ensure_provisioned()
    scheduler = Scheduler(app, clock=app.now)
    due = scheduler.next_runs(app.now())
    end = broker.now() + seconds
    while due and (first := min(due.values()).timestamp()) <= end:
        broker.advance(max(0.0, first - broker.now()))
        scheduler.fire_due(due, app.now())
    broker.advance(max(0.0, end - broker.now()))
    return sorted(((name, when) for name, times in scheduler.sent.items() for when in times), key=lambda p: p[1])
