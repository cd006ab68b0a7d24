"""Topology: the desired declarations, a plan against the live broker, and applying it."""

from amqptasks.topology.apply import ApplyResult, apply_plan
from amqptasks.topology.desired import BindingDecl, DesiredTopology, ExchangeDecl, QueueDecl, desired
from amqptasks.topology.live import plan, provision
from amqptasks.topology.plan import Change, Difference, Plan, make_plan

__all__ = [
    "ApplyResult",
    "BindingDecl",
    "Change",
    "DesiredTopology",
    "Difference",
    "ExchangeDecl",
    "Plan",
    "QueueDecl",
    "apply_plan",
    "desired",
    "make_plan",
    "plan",
    "provision",
]
