"""Failing over between a cluster's nodes for aio-pika's robust connections.

aio-pika reconnects to the URL it was given, so a robust connection to a node that died would wait for that node.
:class:`FailoverConnection` moves each reconnect attempt to the next node: aio-pika clears ``transport`` at the
start of every connection attempt, and every attempt after the first is a retry, after a failure or the loss of
the connection. The first connection is made by :func:`amqptasks.broker.aio.open_robust`, which tries the nodes
in turn (aio-pika's first attempt fails fast instead of retrying).
"""

from __future__ import annotations

from typing import Any, ClassVar

import aio_pika
from yarl import URL

__all__ = ["FailoverConnection", "failover_class"]


class FailoverConnection(aio_pika.RobustConnection):
    NODES: ClassVar[tuple[URL, ...]] = ()

    def __init__(self, url: URL, *args: Any, **kwargs: Any) -> None:
        self._node = 0
        self._attempts = -1  # aio-pika's own __init__ clears transport once before any attempt
        super().__init__(url, *args, **kwargs)

    @property
    def transport(self) -> Any:
        return self.__dict__.get("_transport")

    @transport.setter
    def transport(self, value: Any) -> None:
        if value is None and self.NODES:
            self._attempts += 1
            if self._attempts > 1:  # a retry: the node before did not answer, or its connection was lost
                self._node = (self._node + 1) % len(self.NODES)
                self.url = self.NODES[self._node]
        self.__dict__["_transport"] = value


def failover_class(nodes: tuple[URL, ...]) -> type[FailoverConnection]:
    """A :class:`FailoverConnection` over *nodes* (first: the node the first attempt goes to)."""
    return type("FailoverConnection", (FailoverConnection,), {"NODES": nodes})
