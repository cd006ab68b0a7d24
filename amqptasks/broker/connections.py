"""The one owner of an app's broker connections in a process: its publishers and their lifecycle.

Everything in the package that publishes asks this owner (through ``App.connections``) instead of opening a
connection of its own:

- :meth:`Connections.publisher` -- the blocking, thread-safe confirmed publisher (threads; one connection per
  thread inside it);
- :meth:`Connections.aio_publisher` -- the confirmed publisher of the running event loop, connected once per loop
  (concurrent first publishes share one connection);
- :meth:`Connections.reply_channel` -- the ``rpc://`` reply channel, re-made when its connection was lost.

What each is made of comes from the broker URL's driver (:func:`amqptasks.broker.drivers.driver_for`): RabbitMQ
or ``memory://``. Lifecycle: everything is made on first use; a forked child forgets what it inherited (it must
not write on its parent's sockets, nor wait on its parent's threads or locks) and makes its own on first use;
``close()`` closes what the threads use, ``aclose()`` what the running loop uses; an event loop that is closed
takes its publisher with it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import TYPE_CHECKING

from amqptasks.broker import forks
from amqptasks.broker.drivers import AioPublisher, Driver, OnReply, Publisher, ReplyChannel, driver_for

if TYPE_CHECKING:
    from amqptasks.config.model import Broker

__all__ = ["Connections"]

log = logging.getLogger("amqptasks")


class Connections:
    """The broker objects of one app in this process (see the module docstring). Thread-safe."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._lock = threading.Lock()
        self._driver: Driver | None = None
        self._publisher: Publisher | None = None
        # One connecting task per event loop: concurrent first publishes must share one connection (without it,
        # a gather of 1,000 first adelay() calls opened 1,000 connections).
        self._aio: dict[asyncio.AbstractEventLoop, asyncio.Task[AioPublisher]] = {}
        self._replies: ReplyChannel | None = None
        forks.on_fork_in_child(self._forget_inherited)

    def __repr__(self) -> str:
        return f"<Connections {type(self.driver).__name__}>"

    @property
    def driver(self) -> Driver:
        with self._lock:
            if self._driver is None:
                self._driver = driver_for(self.broker)
            return self._driver

    def publisher(self) -> Publisher:
        """The blocking confirmed publisher (for threads; never call it on a running event loop's thread)."""
        driver = self.driver
        with self._lock:
            if self._publisher is None:
                self._publisher = driver.publisher()
            return self._publisher

    async def aio_publisher(self) -> AioPublisher:
        """The running loop's confirmed publisher, connected (once per loop)."""
        loop = asyncio.get_running_loop()
        connecting = self._aio.get(loop)
        if connecting is None or (connecting.done() and not connecting.cancelled() and connecting.exception()):
            driver = self.driver
            with self._lock:
                for old in [each for each in self._aio if each.is_closed()]:
                    del self._aio[old]  # a loop that is closed took its connection with it
            connecting = loop.create_task(_connected(driver.aio_publisher()))
            self._aio[loop] = connecting
        return await asyncio.shield(connecting)

    def reply_channel(self, on_reply: OnReply) -> ReplyChannel:
        """The ``rpc://`` reply channel, handing each reply to *on_reply*; a new one after its connection was
        lost (replies due on the old one are lost with it)."""
        driver = self.driver
        with self._lock:
            channel = self._replies
            if channel is None or not channel.is_open:
                if channel is not None:
                    channel.close()
                channel = self._replies = driver.reply_channel(on_reply)
            return channel

    def open_reply_channel(self) -> ReplyChannel | None:
        """The reply channel if there is one and it is open (none is made)."""
        channel = self._replies
        return channel if channel is not None and channel.is_open else None

    def close(self) -> None:
        """Close the threads' publisher and the reply channel. A loop's publisher is closed by :meth:`aclose`
        on that loop (a connection of another loop cannot be closed from here: it is forgotten)."""
        with self._lock:
            publisher, self._publisher = self._publisher, None
            replies, self._replies = self._replies, None
            self._aio = {loop: task for loop, task in self._aio.items() if not loop.is_closed()}
        if replies is not None:
            replies.close()
        if publisher is not None:
            publisher.close()

    async def aclose(self) -> None:
        """Close the running loop's publisher."""
        connecting = self._aio.pop(asyncio.get_running_loop(), None)
        if connecting is None or connecting.cancelled():
            return
        try:
            publisher = await connecting
        except Exception:  # it never connected: nothing to close
            return
        await publisher.close()

    def _forget_inherited(self) -> None:
        """In a forked child: drop the parent's objects unused and unclosed (see :mod:`amqptasks.broker.forks`)."""
        forks.keep_inherited(self._publisher, self._replies, *self._aio.values())
        self._lock = threading.Lock()
        self._publisher = None
        self._replies = None
        self._aio = {}


async def _connected(publisher: AioPublisher) -> AioPublisher:
    await publisher.connect()
    return publisher
