"""Desired topology + what the broker holds → a plan (pure).

RabbitMQ cannot change an existing exchange's or queue's properties or x-arguments: redeclaring with
different ones fails with PRECONDITION_FAILED (or, for arguments the broker does not compare, is
silently ignored). Any difference is therefore a conflict, never an update.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from amqptasks.config.diagnostics import Location
from amqptasks.constants import FAILURES_QUEUE, RESERVED_PREFIX, REVOKED_STREAM
from amqptasks.topology.desired import BindingDecl, DesiredTopology, ExchangeDecl, QueueDecl

#: "ensure": a binding AMQP probing cannot see; apply declares it again (idempotent).
Action = Literal["create", "unchanged", "conflict", "delete", "ensure"]
Kind = Literal["exchange", "queue", "binding"]


@dataclass(frozen=True)
class Difference:
    """One property or argument whose value on the broker differs from the configuration."""

    name: str
    broker_value: Any
    config_value: Any
    where: Location | None = None

    def __str__(self) -> str:
        where = f" in {self.where.file}:{self.where.line}" if self.where and self.where.line else " in the config"
        return f"{self.name} is {_show(self.broker_value)} on the broker, {_show(self.config_value)}{where}"


def _show(value: Any) -> str:
    if value is None:
        return "not set"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, str) else str(value)


@dataclass(frozen=True)
class Change:
    action: Action
    kind: Kind
    name: str
    differences: tuple[Difference, ...] = ()
    #: The declaration to make (create) or that conflicts; None for deletions.
    decl: ExchangeDecl | QueueDecl | BindingDecl | None = None
    #: Free-form explanation (e.g. a broker's PRECONDITION_FAILED text from probing).
    detail: str = ""

    def describe(self) -> str:
        head = f"{self.kind} {self.name!r}" if self.kind != "binding" else f"binding {self.name}"
        if self.action != "conflict":
            return head
        reasons = [str(d) for d in self.differences] or [self.detail]
        return head + ": " + "; ".join(reasons)

    def as_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "kind": self.kind,
            "name": self.name,
            "differences": [
                {
                    "name": d.name,
                    "broker": d.broker_value,
                    "config": d.config_value,
                    "where": str(d.where) if d.where else None,
                }
                for d in self.differences
            ],
            "detail": self.detail,
        }


@dataclass(frozen=True)
class Plan:
    changes: tuple[Change, ...]
    #: How the broker was read: "management API" or "AMQP probe".
    source: str
    notes: tuple[str, ...] = field(default=())
    #: The broker's RabbitMQ version, as its connection reported it ("4.0.5"), when known.
    rabbitmq_version: str | None = None

    def by_action(self, action: Action) -> list[Change]:
        return [c for c in self.changes if c.action == action]

    @property
    def conflicts(self) -> list[Change]:
        return self.by_action("conflict")

    @property
    def has_changes(self) -> bool:
        return any(c.action in ("create", "delete", "conflict") for c in self.changes)

    def summary(self) -> str:
        counts = {a: len(self.by_action(a)) for a in ("create", "unchanged", "ensure", "conflict", "delete")}
        return ", ".join(f"{n} to {a}" if a in ("create", "delete") else f"{n} {a}" for a, n in counts.items() if n)


# --- What the broker holds, in a shape independent of how it was read --------------------------


@dataclass(frozen=True)
class Observed:
    """Exchanges, queues and bindings of one vhost, as listed by the management API."""

    exchanges: Mapping[str, Mapping[str, Any]]
    queues: Mapping[str, Mapping[str, Any]]
    bindings: tuple[BindingDecl, ...]


def _compare(
    props: Mapping[str, tuple[Any, Any]],
    arguments: tuple[Mapping[str, Any], Mapping[str, Any]],
    locs: Mapping[str, Location],
) -> tuple[Difference, ...]:
    diffs = [
        Difference(name, broker, config, locs.get(name)) for name, (broker, config) in props.items() if broker != config
    ]
    broker_args, config_args = arguments
    for name in sorted(set(broker_args) | set(config_args)):
        broker_value, config_value = broker_args.get(name), config_args.get(name)
        if not _same(broker_value, config_value):
            diffs.append(Difference(name, broker_value, config_value, locs.get(name)))
    return tuple(diffs)


def _same(a: Any, b: Any) -> bool:
    # The management API renders numbers as JSON; 10 and 10.0 are the same argument.
    if (
        isinstance(a, int | float)
        and isinstance(b, int | float)
        and not isinstance(a, bool)
        and not isinstance(b, bool)
    ):
        return float(a) == float(b)
    return bool(a == b)


def exchange_differences(decl: ExchangeDecl, live: Mapping[str, Any]) -> tuple[Difference, ...]:
    props = {
        "type": (live.get("type"), decl.type),
        "durable": (live.get("durable"), decl.durable),
        "auto_delete": (live.get("auto_delete"), decl.auto_delete),
        "internal": (live.get("internal"), decl.internal),
    }
    return _compare(props, (live.get("arguments") or {}, decl.arguments), decl.locs)


def queue_differences(decl: QueueDecl, live: Mapping[str, Any]) -> tuple[Difference, ...]:
    props = {
        "durable": (live.get("durable"), decl.durable),
        "exclusive": (bool(live.get("exclusive")), decl.exclusive),
        "auto_delete": (live.get("auto_delete"), decl.auto_delete),
    }
    broker_args = dict(live.get("arguments") or {})
    config_args = dict(decl.arguments)
    # A queue declared without x-queue-type is classic; so is one declared with "classic".
    broker_args.setdefault("x-queue-type", "classic")
    config_args.setdefault("x-queue-type", "classic")
    return _compare(props, (broker_args, config_args), decl.locs)


def is_prunable_exchange(name: str) -> bool:
    return name != "" and not name.startswith(RESERVED_PREFIX)


def is_prunable_queue(live: Mapping[str, Any]) -> bool:
    # Exclusive and server-named queues belong to a live connection, not to the topology; the failure
    # records are written by workers, and pruning them would lose why dead letters failed; pruning the stored
    # revocations would let workers started later run revoked tasks.
    name = str(live.get("name", ""))
    return (
        not live.get("exclusive")
        and not name.startswith(RESERVED_PREFIX)
        and name not in (FAILURES_QUEUE, REVOKED_STREAM)
    )


def make_plan(desired: DesiredTopology, observed: Observed, *, prune: bool = False) -> Plan:
    changes: list[Change] = []
    for ex in desired.exchanges:
        changes.append(_object_change("exchange", ex.name, ex, observed.exchanges.get(ex.name), exchange_differences))
    for q in desired.queues:
        changes.append(_object_change("queue", q.name, q, observed.queues.get(q.name), queue_differences))
    live_bindings = {b.identity() for b in observed.bindings}
    for b in desired.bindings:
        action: Action = "unchanged" if b.identity() in live_bindings else "create"
        changes.append(Change(action, "binding", b.describe(), decl=b))
    if prune:
        changes.extend(_deletions(desired, observed))
    return Plan(tuple(changes), "management API")


def _object_change(kind: Kind, name: str, decl: Any, live: Mapping[str, Any] | None, diff: Any) -> Change:
    if live is None:
        return Change("create", kind, name, decl=decl)
    differences: tuple[Difference, ...] = diff(decl, live)
    return Change("conflict" if differences else "unchanged", kind, name, differences, decl=decl)


def _deletions(desired: DesiredTopology, observed: Observed) -> list[Change]:
    wanted_bindings = {b.identity() for b in desired.bindings}
    queues = [
        name for name, live in sorted(observed.queues.items()) if is_prunable_queue(live) and not desired.queue(name)
    ]
    exchanges = [
        name for name in sorted(observed.exchanges) if is_prunable_exchange(name) and not desired.exchange(name)
    ]
    # Bindings of a queue or exchange that goes anyway disappear with it; only list the others.
    going = set(queues) | set(exchanges)
    deletions = [
        Change("delete", "binding", b.describe(), decl=b)
        for b in observed.bindings
        if b.identity() not in wanted_bindings
        and is_prunable_exchange(b.source)
        and not {b.source, b.destination} & going
    ]
    deletions += [Change("delete", "queue", name) for name in queues]
    deletions += [Change("delete", "exchange", name) for name in exchanges]
    return deletions
