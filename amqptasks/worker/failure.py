"""A task that raised: published again as a retry when its options say so, else dead-lettered."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from amqptasks.errors import Retry
from amqptasks.worker.republish import republish
from amqptasks.worker.retrying import countdown_for, should_retry

if TYPE_CHECKING:
    from amqptasks.app import App
    from amqptasks.worker.delivery import Delivery, Settle
    from amqptasks.worker.middleware import Hooks

log = logging.getLogger("amqptasks.worker")


async def failed(d: Delivery, exc: BaseException, app: App, hooks: Hooks, settle: Settle) -> None:
    """Retry (the retry confirmed before the original is acked) or dead-letter the message of a task that raised."""
    assert d.message is not None and d.task is not None
    options, retries = d.task.options, d.message.retries
    if should_retry(options, exc, retries):
        explicit = exc.countdown if isinstance(exc, Retry) else None
        countdown = countdown_for(options, retries, explicit)
        await hooks.run("before_retry", d, exc, countdown, reverse=True)
        try:
            await republish(app, d, countdown)
        except Exception as publish_error:  # could not publish the retry: requeue, never lose it
            log.error("%s: retry could not be published (%s); requeued", d.label, publish_error)
            settle(d, "requeue", "retry publish failed")
            return
        await hooks.run("after_retry", d, exc, countdown, reverse=True)
        settle(d, "ack", "retried")
        return
    cause = exc.exc if isinstance(exc, Retry) and exc.exc is not None else exc
    await hooks.run("after_failure", d, cause, reverse=True)
    settle(d, "reject", f"failed: {type(cause).__name__}: {cause}")
