"""Burst mode: the worker drains its queues, then stops (for cron jobs and tests)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

import aio_pika.abc


async def drained(
    connection: aio_pika.abc.AbstractRobustConnection, queues: Sequence[str], busy: Callable[[], bool]
) -> None:
    """Returns once *queues* have held no ready message, and the worker has not been *busy*, for half a second."""
    channel = await connection.channel()
    idle_since: float | None = None
    while True:
        await asyncio.sleep(0.2)
        try:
            counts = await _ready_counts(channel, queues)
        except Exception:  # reconnecting: ask again on the next tick
            idle_since = None
            continue
        if busy() or any(counts):
            idle_since = None
        elif idle_since is None:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since > 0.5:
            return


async def _ready_counts(channel: aio_pika.abc.AbstractRobustChannel, queues: Sequence[str]) -> list[int]:
    # robust=False: a robust channel answers repeated passive declares from a cache (aio-pika 10), so the
    # count would never change; this asks the broker every time.
    counts = []
    for name in queues:
        queue = await channel.declare_queue(name, passive=True, robust=False)
        counts.append(queue.declaration_result.message_count or 0)
    return counts
