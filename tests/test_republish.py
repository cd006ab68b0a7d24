"""What a message sent again keeps (pure): a retry, a counted redelivery, an early message and a workflow
hand-off that failed are all derived from the received message by one function, worker/republish.again."""

from __future__ import annotations

from dataclasses import fields
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from amqptasks.constants import HANDOFFS_HEADER, REDELIVERIES_HEADER
from amqptasks.message.protocol import TaskMessage
from amqptasks.worker.delivery import Delivery
from amqptasks.worker.republish import again
from amqptasks.worker.transport import Incoming

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)

#: A chord member in a chain, with callbacks, errbacks, lineage, reply-to and limits: every workflow field set.
ORIGINAL = TaskMessage(
    id="t-1", task="tasks.flaky", args=(1, 2), kwargs={"k": 3}, eta=NOW + timedelta(seconds=5),
    expires=NOW + timedelta(hours=1), retries=2, root_id="root", parent_id="parent", group="g-1", group_index=4,
    timelimit=(30.0, 20.0), ignore_result=True, callbacks=({"task": "tasks.cb"},), errbacks=({"task": "tasks.eb"},),
    chain=({"task": "tasks.next"},), chord={"task": "tasks.tsum", "chord_size": 5}, reply_to="amq.rabbitmq.reply-to.x",
    origin="1@host", extra_headers={"tenant": "acme", REDELIVERIES_HEADER: 3},
)  # fmt: skip
#: What a resend may change; every other field must be the original's.
CHANGED = {"retries", "eta", "extra_headers"}


def delivery() -> Delivery:
    raw = Incoming(b"", None, "application/json", "utf-8", "t-1", None, None, False, "", "work", 1, "work", 0)
    return Delivery(raw, "work", message=ORIGINAL)


@pytest.mark.parametrize(
    ("mode", "options", "retries", "eta", "headers"),
    [
        ("retry", {"retry": True, "countdown": 0.2, "headers": {}}, 3, NOW + timedelta(seconds=0.2), {}),
        ("retry at once", {"retry": True, "countdown": 0, "headers": {}}, 3, None, {}),
        ("counted redelivery", {"retry": False, "countdown": 0, "headers": {REDELIVERIES_HEADER: 4}}, 2,
         ORIGINAL.eta, {REDELIVERIES_HEADER: 4}),
        ("early", {"retry": False, "countdown": 0, "headers": {}}, 2, ORIGINAL.eta, {}),
        ("hand-off failed", {"retry": False, "countdown": 2.0, "headers": {HANDOFFS_HEADER: 2}}, 2,
         NOW + timedelta(seconds=2), {HANDOFFS_HEADER: 2}),
    ],
)  # fmt: skip
def test_a_resent_message_keeps_every_workflow_field(
    mode: str, options: dict[str, Any], retries: int, eta: datetime | None, headers: dict[str, Any]
) -> None:
    resent = again(delivery(), **options, delays=True, now=NOW)
    kept = {f.name for f in fields(TaskMessage)} - CHANGED
    assert {name: getattr(resent, name) for name in kept} == {name: getattr(ORIGINAL, name) for name in kept}, mode
    assert (resent.retries, resent.eta) == (retries, eta)
    assert resent.extra_headers == {"tenant": "acme", **headers}  # the old redelivery count is dropped


def test_without_delay_tiers_a_resend_is_due_at_once() -> None:
    resent = again(delivery(), retry=True, countdown=5, headers={}, delays=False, now=NOW)
    assert resent.eta is None and resent.chain == ORIGINAL.chain
