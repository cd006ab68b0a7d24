"""A message sent again as a fresh one: a retry, a counted redelivery, an early message back through the delay tiers."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from amqptasks.constants import REDELIVERIES_HEADER
from amqptasks.tasks.sending import prepare

if TYPE_CHECKING:
    from amqptasks.app import App
    from amqptasks.worker.delivery import Delivery

log = logging.getLogger("amqptasks.worker")


async def republish(
    app: App, d: Delivery, countdown: float, *, retries_delta: int = 1, redeliveries: int | None = None
) -> None:
    """The same task again as a fresh message (no x-death), confirmed before the original is acked.

    A retry starts with no redelivery count (the task ran to its end); a counted copy carries *redeliveries*.
    """
    assert d.message is not None
    m = d.message
    headers = {k: v for k, v in m.extra_headers.items() if k != REDELIVERIES_HEADER}
    if redeliveries is not None:
        headers[REDELIVERIES_HEADER] = redeliveries
    options = d.task.options if d.task else app.task_options(m.task)
    delays = app.config.delays.enabled
    if countdown > 0 and not delays:
        log.warning("%s: retrying at once: countdown %.1f s needs 'delays: {enabled: true}'", d.label, countdown)
        countdown = 0
    call_options: dict[str, Any] = {
        "task_id": m.id, "retries": m.retries + retries_delta, "root_id": m.root_id, "parent_id": m.parent_id,
        "headers": headers,
        "expires": m.expires, "link": list(m.callbacks) or None, "link_error": list(m.errbacks) or None,
        "priority": d.raw.priority, "group_id": m.group, "group_index": m.group_index, "reply_to": m.reply_to,
        "time_limit": m.timelimit[0], "soft_time_limit": m.timelimit[1],
        "countdown": countdown if countdown > 0 else None, **d.destination(),
    }  # fmt: skip
    prepared = prepare(options, m.args, m.kwargs, call_options, app.send_settings)
    publisher = await app.aio_publisher()
    await publisher.publish(prepared.envelope)
