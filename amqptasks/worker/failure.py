"""A task's message after it ran: acked, published again as a retry, dead-lettered, or sent again because what
its workflow needs next could not be published."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from amqptasks.constants import HANDOFFS_HEADER
from amqptasks.errors import Retry
from amqptasks.worker.republish import republish
from amqptasks.worker.retrying import countdown_for, should_retry

if TYPE_CHECKING:
    from amqptasks.app import App
    from amqptasks.worker.delivery import Delivery, Settle
    from amqptasks.worker.middleware import Hooks

log = logging.getLogger("amqptasks.worker")

#: The longest wait between two attempts at a workflow hand-off that could not be published.
HANDOFF_BACKOFF_MAX = 60.0


async def succeeded(d: Delivery, app: App, settle: Settle) -> None:
    """Ack a task that returned, unless its workflow hand-off failed (see :func:`handoff_failed`)."""
    if d.handoff_error is not None:
        await handoff_failed(d, app, settle)
    else:
        settle(d, "ack", "succeeded")


async def failed(d: Delivery, exc: BaseException, app: App, hooks: Hooks, settle: Settle) -> None:
    """Retry (the retry confirmed before the original is acked) or dead-letter the message of a task that raised."""
    assert d.message is not None and d.task is not None
    options, retries = d.task.options, d.message.retries
    if should_retry(options, exc, retries):
        explicit = exc.countdown if isinstance(exc, Retry) else None
        countdown = countdown_for(options, retries, explicit)
        await hooks.run("before_retry", d, exc, countdown, reverse=True)
        try:
            await republish(app, d, retry=True, countdown=countdown)
        except Exception as publish_error:  # could not publish the retry: requeue, never lose it
            log.error("%s: retry could not be published (%s); requeued", d.label, publish_error)
            settle(d, "requeue", "retry publish failed")
            return
        await hooks.run("after_retry", d, exc, countdown, reverse=True)
        settle(d, "ack", "retried")
        return
    cause = exc.exc if isinstance(exc, Retry) and exc.exc is not None else exc
    await hooks.run("after_failure", d, cause, reverse=True)
    if d.handoff_error is not None:  # its errback was not published: not dead-lettered until it is
        await handoff_failed(d, app, settle)
        return
    settle(d, "reject", f"failed: {type(cause).__name__}: {cause}")


def transient(exc: BaseException | None) -> bool:
    """A publish failure that may go away (the broker refused, a queue or exchange is missing, the connection
    was lost), rather than one that happens again whatever the broker does: a value that cannot be encoded
    (EncodeError is a TypeError), arguments the next step does not take, a bad option."""
    return not isinstance(exc, TypeError | ValueError)


async def handoff_failed(d: Delivery, app: App, settle: Settle) -> None:
    """The task ran, but the next step of its chain, its chord hand-off, a callback or an errback could not be
    published (a missing exchange or queue, a broker refusal): acking would lose the rest of the workflow.

    Like a retry that could not be published, the message stays on the broker: it is sent again through the
    delay tiers, backing off (1, 2, 4... up to 60 s), so the task runs again, and its workflow resumes, once the
    cause is fixed. Without delay tiers, or when even that cannot be published, it is requeued (and counted as a
    redelivery). The task runs again each time: at least once, as with any redelivery. A failure that running it
    again cannot cure (a result the next step cannot encode) dead-letters the message instead.
    """
    assert d.message is not None
    if not transient(d.handoff_error):
        # What comes next can never be published as it is (its arguments cannot be encoded, a bad signature):
        # running the task again would fail the same way. Dead-lettered, to be replayed once the code is fixed.
        log.error("%s: what its workflow needs next cannot be published (%s); dead-lettered", d.label, d.handoff_error)
        settle(d, "reject", f"workflow hand-off failed: {d.handoff_error!r}")
        return
    previous = d.message.extra_headers.get(HANDOFFS_HEADER, 0)
    attempt = (previous if isinstance(previous, int) else 0) + 1
    backoff = min(2.0 ** (attempt - 1), HANDOFF_BACKOFF_MAX)
    if app.config.delays.enabled:
        try:
            await republish(app, d, countdown=backoff, headers={HANDOFFS_HEADER: attempt})
        except Exception as exc:
            log.error("%s: what its workflow needs next was not published (%s), nor could it be sent again (%s); "
                      "requeued", d.label, d.handoff_error, exc)  # fmt: skip
        else:
            log.error("%s: what its workflow needs next was not published (%s); it runs again in %g s (attempt %d)",
                      d.label, d.handoff_error, backoff, attempt)  # fmt: skip
            settle(d, "ack", "workflow hand-off failed: sent again")
            return
    else:
        log.error("%s: what its workflow needs next was not published (%s); requeued", d.label, d.handoff_error)
    settle(d, "requeue", "workflow hand-off failed")
