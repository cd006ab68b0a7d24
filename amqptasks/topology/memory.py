"""Plan and provision a configuration on a ``memory://`` broker: the same plan, conflicts and apply order as on
RabbitMQ (:mod:`amqptasks.topology.plan`, :mod:`amqptasks.topology.apply`), read from the broker's own state."""

from __future__ import annotations

from amqptasks.broker.memory import MemoryBroker, broker_for
from amqptasks.config.model import Config
from amqptasks.topology.apply import ApplyResult, apply_plan
from amqptasks.topology.desired import BindingDecl, desired
from amqptasks.topology.plan import Observed, Plan, make_plan

__all__ = ["observe", "plan", "provision"]


def observe(broker: MemoryBroker) -> Observed:
    """What *broker* holds, in the management API's shape."""
    snapshot = broker.snapshot()
    bindings = tuple(
        BindingDecl(b.source, b.destination, b.destination_type, b.routing_key, dict(b.arguments))
        for b in snapshot["bindings"]
    )
    return Observed(snapshot["exchanges"], snapshot["queues"], bindings)


def plan(config: Config, *, prune: bool = False) -> Plan:
    broker = broker_for(config.broker.url)
    the_plan = make_plan(desired(config.topology, config.delays), observe(broker), prune=prune)
    return Plan(the_plan.changes, "memory:// broker", the_plan.notes)


def provision(config: Config, *, prune: bool = False) -> tuple[Plan, ApplyResult]:
    """Check every object against the broker; if nothing conflicts, make the missing ones (as on RabbitMQ)."""
    the_plan = plan(config, prune=prune)
    return the_plan, apply_plan(the_plan, broker_for(config.broker.url))
