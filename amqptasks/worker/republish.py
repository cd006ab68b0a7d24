"""A message sent again as a fresh one: a retry, a counted redelivery, an early message back through the delay tiers."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from amqptasks.constants import REDELIVERIES_HEADER
from amqptasks.message.protocol import TaskMessage, retried
from amqptasks.tasks.routing import Destination
from amqptasks.tasks.sending import prepare_again

if TYPE_CHECKING:
    from amqptasks.app import App
    from amqptasks.worker.delivery import Delivery

log = logging.getLogger("amqptasks.worker")


def again(
    d: Delivery, *, countdown: float | None, redeliveries: int | None, delays: bool, now: datetime
) -> TaskMessage:
    """The message to send again, derived from the one received: only the retry count, the eta and the
    redelivery count change (see :func:`amqptasks.tasks.sending.prepare_again` for what is kept).

    *countdown* given: a retry (one more retry, due *countdown* s from *now*); None: the same run sent again
    (a counted redelivery, an early message), its eta kept.
    """
    assert d.message is not None
    m = d.message
    headers = {k: v for k, v in m.extra_headers.items() if k != REDELIVERIES_HEADER}
    if redeliveries is not None:
        headers[REDELIVERIES_HEADER] = redeliveries
    if countdown is None:
        retries, eta = m.retries, m.eta
    else:
        retries, eta = m.retries + 1, now + timedelta(seconds=countdown) if countdown > 0 else None
    if eta is not None and eta > now and not delays:
        eta = None  # no tiers to wait in; the eta check then runs it at once, as it would have anyway
    return retried(m, retries=retries, eta=eta, extra_headers=headers)


def destination(d: Delivery) -> Destination:
    """Where the message was first sent (not the delay tier it may have come from), with its priority."""
    target = d.destination()
    if "queue" in target:
        return Destination("", target["queue"], target["queue"], d.raw.priority)
    return Destination(target["exchange"], target["routing_key"], None, d.raw.priority)


async def republish(app: App, d: Delivery, countdown: float | None = None, *, redeliveries: int | None = None) -> None:
    """The same task again as a fresh message (no x-death), confirmed before the original is acked.

    A retry (*countdown* given) starts with no redelivery count (the task ran to its end); a counted copy
    carries *redeliveries*.
    """
    assert d.message is not None
    delays = app.config.delays.enabled
    if countdown is not None and countdown > 0 and not delays:
        log.warning("%s: retrying at once: countdown %.1f s needs 'delays: {enabled: true}'", d.label, countdown)
        countdown = 0
    now = datetime.now(UTC)
    message = again(d, countdown=countdown, redeliveries=redeliveries, delays=delays, now=now)
    options = d.task.options if d.task else app.task_options(message.task)
    prepared = prepare_again(message, destination(d), app.send_settings, serializer=options.serializer,
                             compression=options.compression, now=now)  # fmt: skip
    publisher = await app.aio_publisher()
    await publisher.publish(prepared.envelope)
