"""Publishing messages: ``SyncPublisher`` (threads, pika) and ``AsyncPublisher`` (asyncio, aio-pika), both
confirmed by default, with a Celery-style ``RetryPolicy`` for lost connections.

``AsyncPublisher`` is imported on first use, so that synchronous code does not pull in aio-pika.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from amqptasks.broker.rabbitmq.blocking import SyncPublisher
from amqptasks.broker.retry import NO_RETRY, RetryPolicy, from_options

if TYPE_CHECKING:
    from amqptasks.broker.rabbitmq.aio_publisher import AsyncPublisher

__all__ = ["NO_RETRY", "AsyncPublisher", "RetryPolicy", "SyncPublisher", "from_options"]


def __getattr__(name: str) -> Any:
    if name == "AsyncPublisher":
        from amqptasks.broker.rabbitmq.aio_publisher import AsyncPublisher

        return AsyncPublisher
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
