"""Carry out a plan on the broker: all-or-nothing with respect to conflicts, in dependency order."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions

from amqptasks.errors import BrokerError, TopologyConflict
from amqptasks.topology.desired import BindingDecl, ExchangeDecl, QueueDecl
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


def apply_plan(plan: Plan, connection: pika.BlockingConnection) -> ApplyResult:
    """Make the changes of *plan*; raises :class:`TopologyConflict` before touching anything."""
    if plan.conflicts:
        raise TopologyConflict(conflict_report(plan))
    work = sorted((c for c in plan.changes if (c.action, c.kind) in _ORDER), key=lambda c: _ORDER[(c.action, c.kind)])
    result = ApplyResult()
    channel = connection.channel()
    for change in work:
        try:
            _run(channel, change)
        except pika.exceptions.ChannelClosedByBroker as exc:
            done = ", ".join(c.describe() for c in result.done) or "nothing"
            raise BrokerError(
                f"{change.action} {change.describe()} failed: {exc.reply_text} (already done: {done})"
            ) from None
        result.done.append(change)
    channel.close()
    return result


def _run(channel: Any, change: Change) -> None:
    decl = change.decl
    action: Callable[[], object]
    if change.action == "delete":
        action = _delete(channel, change)
    elif isinstance(decl, ExchangeDecl):
        action = lambda: channel.exchange_declare(  # noqa: E731
            decl.name,
            decl.type,
            durable=decl.durable,
            auto_delete=decl.auto_delete,
            internal=decl.internal,
            arguments=dict(decl.arguments),
        )
    elif isinstance(decl, QueueDecl):
        action = lambda: channel.queue_declare(  # noqa: E731
            decl.name,
            durable=decl.durable,
            exclusive=decl.exclusive,
            auto_delete=decl.auto_delete,
            arguments=dict(decl.arguments),
        )
    elif isinstance(decl, BindingDecl):
        action = lambda: _bind(channel, decl, unbind=False)  # noqa: E731
    else:  # pragma: no cover - plans only hold the kinds above
        raise AssertionError(change)
    action()


def _bind(channel: Any, b: BindingDecl, *, unbind: bool) -> None:
    args = dict(b.arguments)
    if b.destination_type == "queue":
        method = channel.queue_unbind if unbind else channel.queue_bind
        method(b.destination, b.source, routing_key=b.routing_key, arguments=args)
    else:
        method = channel.exchange_unbind if unbind else channel.exchange_bind
        method(b.destination, b.source, routing_key=b.routing_key, arguments=args)


def _delete(channel: Any, change: Change) -> Callable[[], object]:
    if change.kind == "queue":
        return lambda: channel.queue_delete(change.name)
    if change.kind == "exchange":
        return lambda: channel.exchange_delete(change.name)
    assert isinstance(change.decl, BindingDecl)
    binding = change.decl
    return lambda: _bind(channel, binding, unbind=True)
