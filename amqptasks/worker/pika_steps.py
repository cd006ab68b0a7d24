"""pika's asynchronous calls, awaited on the worker's loop: each step of connecting answers or times out, and
every step still waiting fails at once when its channel or connection is lost."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pika.channel
from pika.adapters.asyncio_connection import AsyncioConnection

#: How long one step of connecting (open, channel, declare, consume) may take.
STEP_TIMEOUT_S = 30.0


class Lost(Exception):
    """The channel or connection closed while connecting."""


class Steps:
    """The steps in progress on *loop*: failed with :class:`Lost` when the channel is lost."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending: set[asyncio.Future[Any]] = set()

    async def run(self, call: Callable[[Callable[..., None]], Any]) -> Any:
        """One asynchronous pika call: its callback's argument, or :class:`Lost` if the channel goes first."""
        future: asyncio.Future[Any] = self._loop.create_future()
        self._pending.add(future)
        try:
            call(lambda result=None: resolve(future, result))
            return await asyncio.wait_for(future, STEP_TIMEOUT_S)
        finally:
            self._pending.discard(future)

    def fail(self, reason: BaseException | str) -> None:
        for future in list(self._pending):
            if not future.done():
                future.set_exception(Lost(str(reason)))


async def queue_exists(loop: asyncio.AbstractEventLoop, connection: AsyncioConnection, queue: str) -> bool:
    """Whether *queue* exists, asked on a channel of its own: a passive declare of a missing queue closes it."""
    opened: asyncio.Future[pika.channel.Channel] = loop.create_future()
    connection.channel(on_open_callback=lambda ch: resolve(opened, ch))
    probe = await asyncio.wait_for(opened, STEP_TIMEOUT_S)
    answer: asyncio.Future[bool] = loop.create_future()
    probe.add_on_close_callback(lambda _ch, _reason: resolve(answer, False))
    probe.queue_declare(queue, passive=True, callback=lambda _frame: resolve(answer, True))
    exists = await asyncio.wait_for(answer, STEP_TIMEOUT_S)
    if probe.is_open:
        probe.close()
    return exists


def resolve(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)
