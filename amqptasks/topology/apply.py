"""Carry out a plan on the broker: all-or-nothing with respect to conflicts, in dependency order."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions

from amqptasks.broker.memory import ChannelError as MemoryChannelError
from amqptasks.errors import BrokerError, TopologyConflict
from amqptasks.topology.declare import declare, unbind
from amqptasks.topology.desired import BindingDecl
from amqptasks.topology.plan import Change, Plan

#: Order of work: exchanges before the queues that dead-letter to them, bindings last; deletions
#: in the reverse order (a binding before its queue, a queue before the exchange it points to).
_ORDER = {
    ("create", "exchange"): 0,
    ("create", "queue"): 1,
    ("create", "binding"): 2,
    ("ensure", "binding"): 2,
    ("delete", "binding"): 3,
    ("delete", "queue"): 4,
    ("delete", "exchange"): 5,
}


@dataclass
class ApplyResult:
    done: list[Change] = field(default_factory=list)

    def count(self, action: str) -> int:
        return sum(1 for c in self.done if c.action == action)


def conflict_report(plan: Plan) -> str:
    lines = [f"  {c.describe()}" for c in plan.conflicts]
    return (
        "the broker differs from the configuration; nothing was changed:\n"
        + "\n".join(lines)
        + "\nRabbitMQ cannot change an existing queue's or exchange's properties. Delete and re-create the "
        "object (its messages are lost unless moved first), or give it a new name."
    )


def apply_plan(plan: Plan, connection: Any) -> ApplyResult:
    """Make the changes of *plan* on *connection* (pika's, or a memory:// broker: anything with ``channel()``);
    raises :class:`TopologyConflict` before touching anything."""
    if plan.conflicts:
        raise TopologyConflict(conflict_report(plan))
    work = sorted((c for c in plan.changes if (c.action, c.kind) in _ORDER), key=lambda c: _ORDER[(c.action, c.kind)])
    result = ApplyResult()
    channel = connection.channel()
    for change in work:
        try:
            _run(channel, change)
        except (pika.exceptions.ChannelClosedByBroker, MemoryChannelError) as exc:
            done = ", ".join(c.describe() for c in result.done) or "nothing"
            raise BrokerError(
                f"{change.action} {change.describe()} failed: {exc.reply_text} (already done: {done})"
            ) from None
        result.done.append(change)
    channel.close()
    return result


def _run(channel: Any, change: Change) -> None:
    if change.action != "delete":
        assert change.decl is not None
        declare(channel, change.decl)
    elif change.kind == "queue":
        channel.queue_delete(change.name)
    elif change.kind == "exchange":
        channel.exchange_delete(change.name)
    else:
        assert isinstance(change.decl, BindingDecl)
        unbind(channel, change.decl)
