"""A message sent again as a fresh one: a retry, a counted redelivery, an early message back through the delay tiers."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from amqptasks.constants import REDELIVERIES_HEADER
from amqptasks.message.protocol import TaskMessage, retried
from amqptasks.tasks.routing import Destination
from amqptasks.tasks.sending import prepare_again

if TYPE_CHECKING:
    from amqptasks.app import App
    from amqptasks.worker.delivery import Delivery

log = logging.getLogger("amqptasks.worker")


def again(
    d: Delivery, *, retry: bool, countdown: float, headers: Mapping[str, Any], delays: bool, now: datetime
) -> TaskMessage:
    """The message to send again, derived from the one received: only the retry count, the eta and our own
    headers change (see :func:`amqptasks.tasks.sending.prepare_again` for what is kept).

    *retry*: one more retry, due *countdown* s from *now*. Otherwise the same run sent again: due *countdown* s
    from now if given (a hand-off that could not be published), else at its own eta (a counted redelivery, an
    early message). The redelivery count is dropped unless *headers* sets it again.
    """
    assert d.message is not None
    m = d.message
    # x-delivery-count is the quorum queue's count of the received copy; the fresh one starts from zero.
    extra = {k: v for k, v in m.extra_headers.items() if k not in (REDELIVERIES_HEADER, "x-delivery-count")}
    extra.update(headers)
    later = now + timedelta(seconds=countdown) if countdown > 0 else None
    retries, eta = (m.retries + 1, later) if retry else (m.retries, later or m.eta)
    if eta is not None and eta > now and not delays:
        eta = None  # no tiers to wait in; the eta check then runs it at once, as it would have anyway
    return retried(m, retries=retries, eta=eta, extra_headers=extra)


def destination(d: Delivery) -> Destination:
    """Where the message was first sent (not the delay tier it may have come from), with its priority."""
    target = d.destination()
    if "queue" in target:
        return Destination("", target["queue"], target["queue"], d.raw.priority)
    return Destination(target["exchange"], target["routing_key"], None, d.raw.priority)


async def republish(
    app: App, d: Delivery, *, retry: bool = False, countdown: float = 0.0, headers: Mapping[str, Any] | None = None
) -> None:
    """The same task again as a fresh message (no x-death), confirmed before the original is acked (see
    :func:`again` for what changes). A retry starts with no redelivery count (the task ran to its end)."""
    assert d.message is not None
    delays = app.config.delays.enabled
    if countdown > 0 and not delays:
        log.warning("%s: sent again at once: a countdown of %.1f s needs 'delays: {enabled: true}'", d.label, countdown)
        countdown = 0
    now = datetime.now(UTC)
    message = again(d, retry=retry, countdown=countdown, headers=headers or {}, delays=delays, now=now)
    options = d.task.options if d.task else app.task_options(message.task)
    prepared = prepare_again(message, destination(d), app.send_settings, serializer=options.serializer,
                             compression=options.compression, now=now)  # fmt: skip
    publisher = await app.aio_publisher()
    await publisher.publish(prepared.envelope)
