"""Talking to RabbitMQ: broker URLs, pika connections, the management HTTP API.

``url`` and ``management`` need only the standard library; ``connection`` (pika) is imported on first use so
that pure code importing ``BrokerURL`` does not pull in pika.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from amqptasks.broker.management import ManagementClient
from amqptasks.broker.url import BrokerURL, mask_url

if TYPE_CHECKING:
    from amqptasks.broker.connection import TLSOptions, open_blocking, pika_parameters

__all__ = ["BrokerURL", "ManagementClient", "TLSOptions", "mask_url", "open_blocking", "pika_parameters"]

_LAZY = frozenset({"TLSOptions", "open_blocking", "pika_parameters"})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from amqptasks.broker import connection

        return getattr(connection, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
