"""The configuration → the exact declarations to make on the broker (pure).

This is where ``dead_letter: auto`` turns into an exchange, a queue and a binding, ``delays: {enabled: true}``
into the delay tiers (:mod:`amqptasks.delays.tiers`), and typed queue fields into x-arguments. Planning,
applying, exporting and graphing all read this one form.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from amqptasks.config.diagnostics import NOWHERE, Location
from amqptasks.config.model import DeadLetter, Delays, Exchange, Queue, RoutingSpec, Topology
from amqptasks.constants import DLX_EXCHANGE, UNROUTABLE_EXCHANGE, dlq_name

#: Queue fields → x-argument names; values are converted by :func:`_queue_arguments`.
_QUEUE_FIELDS = (
    ("max_priority", "x-max-priority"),
    ("message_ttl", "x-message-ttl"),
    ("expires", "x-expires"),
    ("max_length", "x-max-length"),
    ("max_length_bytes", "x-max-length-bytes"),
    ("overflow", "x-overflow"),
    ("delivery_limit", "x-delivery-limit"),
)


@dataclass(frozen=True)
class ExchangeDecl:
    name: str
    type: str
    durable: bool = True
    auto_delete: bool = False
    internal: bool = False
    arguments: Mapping[str, Any] = field(default_factory=dict)
    loc: Location = field(default=NOWHERE, compare=False)
    #: Where each property/argument was written, for conflict messages.
    locs: Mapping[str, Location] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class QueueDecl:
    name: str
    durable: bool = True
    exclusive: bool = False
    auto_delete: bool = False
    arguments: Mapping[str, Any] = field(default_factory=dict)
    loc: Location = field(default=NOWHERE, compare=False)
    locs: Mapping[str, Location] = field(default_factory=dict, compare=False)

    @property
    def queue_type(self) -> str:
        return str(self.arguments.get("x-queue-type", "classic"))

    @property
    def dead_letter_exchange(self) -> str | None:
        value = self.arguments.get("x-dead-letter-exchange")
        return None if value is None else str(value)


@dataclass(frozen=True)
class BindingDecl:
    source: str
    destination: str
    destination_type: Literal["queue", "exchange"]
    routing_key: str = ""
    arguments: Mapping[str, Any] = field(default_factory=dict)
    loc: Location = field(default=NOWHERE, compare=False)

    def identity(self) -> tuple[str, str, str, str, str]:
        """What makes two bindings the same binding on the broker."""
        args = repr(sorted((str(k), repr(v)) for k, v in self.arguments.items()))
        return (self.source, self.destination_type, self.destination, self.routing_key, args)

    def describe(self) -> str:
        arrow = f"{self.source or '(default)'} -> {self.destination_type} {self.destination}"
        if self.routing_key:
            arrow += f" [{self.routing_key}]"
        shown = {k: v for k, v in self.arguments.items()}
        return arrow + (f" {shown}" if shown else "")


@dataclass(frozen=True)
class DesiredTopology:
    exchanges: tuple[ExchangeDecl, ...] = ()
    queues: tuple[QueueDecl, ...] = ()
    #: In creation order: queue bindings, then exchange-to-exchange bindings downstream first.
    bindings: tuple[BindingDecl, ...] = ()

    def exchange(self, name: str) -> ExchangeDecl | None:
        return next((e for e in self.exchanges if e.name == name), None)

    def queue(self, name: str) -> QueueDecl | None:
        return next((q for q in self.queues if q.name == name), None)


def _exchange(ex: Exchange) -> ExchangeDecl:
    arguments: dict[str, Any] = dict(ex.arguments)
    locs = {name: ex.where(name) for name in ("type", "durable", "auto_delete", "internal")}
    locs.update({k: ex.where("arguments") for k in ex.arguments})
    if ex.alternate_exchange is not None:
        arguments["alternate-exchange"] = ex.alternate_exchange
        locs["alternate-exchange"] = ex.where("alternate_exchange")
    return ExchangeDecl(ex.name, ex.type, ex.durable, ex.auto_delete, ex.internal, arguments, ex.loc, locs)


def _queue_arguments(q: Queue) -> tuple[dict[str, Any], dict[str, Location]]:
    arguments: dict[str, Any] = dict(q.arguments)
    locs = {k: q.where("arguments") for k in q.arguments}
    # Classic is RabbitMQ's default; leaving x-queue-type out keeps us equivalent to queues declared
    # without it (by other clients, or by older versions of this config).
    if q.type != "classic":
        arguments["x-queue-type"] = q.type
        locs["x-queue-type"] = q.where("type")
    for name, argument in _QUEUE_FIELDS:
        value = getattr(q, name)
        # RabbitMQ 4.0+ quorum queues have priorities without x-max-priority, and refuse it (3.x refuses
        # max_priority on them altogether: plan and apply say so).
        if value is not None and not (argument == "x-max-priority" and q.type == "quorum"):
            arguments[argument] = value
            locs[argument] = q.where(name)
    if q.single_active_consumer:
        arguments["x-single-active-consumer"] = True
        locs["x-single-active-consumer"] = q.where("single_active_consumer")
    if q.dead_letter == "auto":
        arguments["x-dead-letter-exchange"] = DLX_EXCHANGE
        arguments["x-dead-letter-routing-key"] = q.name
    elif isinstance(q.dead_letter, DeadLetter):
        arguments["x-dead-letter-exchange"] = q.dead_letter.exchange
        if q.dead_letter.routing_key is not None:
            arguments["x-dead-letter-routing-key"] = q.dead_letter.routing_key
    if q.dead_letter is not None:
        locs["x-dead-letter-exchange"] = locs["x-dead-letter-routing-key"] = q.where("dead_letter")
    return arguments, locs


def _queue(q: Queue) -> QueueDecl:
    arguments, locs = _queue_arguments(q)
    locs.update({name: q.where(name) for name in ("durable", "exclusive", "auto_delete")})
    return QueueDecl(q.name, q.durable, q.exclusive, q.auto_delete, arguments, q.loc, locs)


def _bindings(spec: RoutingSpec, source: str, dest: str, kind: Literal["queue", "exchange"]) -> list[BindingDecl]:
    arguments = spec.binding_arguments()
    return [BindingDecl(source, dest, kind, key, arguments, spec.loc) for key in spec.binding_keys()]


def _downstream_first(bindings: list[BindingDecl]) -> list[BindingDecl]:
    """Order exchange-to-exchange bindings so that X -> Y comes after every binding out of Y.

    Created this way, a message never enters an exchange whose onward bindings are still missing,
    so applying to a live vhost does not make routable messages unroutable for a moment. Cycles
    (legal in RabbitMQ) keep their declaration order.
    """
    ordered: list[BindingDecl] = []
    pending = list(bindings)
    while pending:
        sources = {b.source for b in pending}
        ready = [b for b in pending if b.destination not in sources or b.destination == b.source]
        if not ready:
            ordered.extend(pending)
            break
        ordered.extend(ready)
        pending = [b for b in pending if b not in ready]
    return ordered


def _dedupe(bindings: list[BindingDecl]) -> tuple[BindingDecl, ...]:
    seen: set[tuple[str, str, str, str, str]] = set()
    unique = []
    for b in bindings:
        if b.identity() not in seen:
            seen.add(b.identity())
            unique.append(b)
    return tuple(unique)


def _with_unroutable(decl: ExchangeDecl, where: Location) -> ExchangeDecl:
    """*decl*, with amqptasks.unroutable as alternate exchange unless it has one of its own."""
    if "alternate-exchange" in decl.arguments:
        return decl
    arguments = {**decl.arguments, "alternate-exchange": UNROUTABLE_EXCHANGE}
    return replace(decl, arguments=arguments, locs={**decl.locs, "alternate-exchange": where})


def _tiers(topology: Topology, delays: Delays) -> tuple[list[ExchangeDecl], list[QueueDecl], list[BindingDecl]]:
    # Imported here: the tiers are built from this module's declaration classes (an import cycle otherwise).
    from amqptasks.delays.tiers import tier_topology

    # No exit binding to streams: RabbitMQ 3.x drops a dead-lettered message routed to a stream, and a delayed
    # message leaves the last tier by dead-lettering. Unbound, a delayed message for a stream is kept by
    # amqptasks.unroutable instead of vanishing.
    queues = [q.name for q in topology.queues if q.type != "stream"]
    return tier_topology([e.name for e in topology.exchanges], queues, loc=delays.where("enabled"))


def desired(topology: Topology, delays: Delays | None = None) -> DesiredTopology:
    """What to declare for *topology*; with *delays* enabled, also the delay tiers and their alternate exchange."""
    exchanges = [_exchange(e) for e in topology.exchanges]
    if delays is not None and delays.enabled:
        exchanges = [_with_unroutable(e, delays.where("enabled")) for e in exchanges]
    queues = [_queue(q) for q in topology.queues]
    queue_bindings: list[BindingDecl] = []
    exchange_bindings: list[BindingDecl] = []
    auto_dlq = [q for q in topology.queues if q.dead_letter == "auto"]
    if auto_dlq:
        where = auto_dlq[0].where("dead_letter")
        exchanges.append(ExchangeDecl(DLX_EXCHANGE, "direct", loc=where))
    for q in auto_dlq:
        where = q.where("dead_letter")
        dlq_args = {"x-queue-type": "quorum"} if q.type == "quorum" else {}
        queues.append(QueueDecl(dlq_name(q.name), arguments=dlq_args, loc=where))
        queue_bindings.append(BindingDecl(DLX_EXCHANGE, dlq_name(q.name), "queue", q.name, loc=where))
    for q in topology.queues:
        for qb in q.bindings:
            queue_bindings.extend(_bindings(qb, qb.exchange, q.name, "queue"))
    for b in topology.bindings:
        if b.queue is not None:
            queue_bindings.extend(_bindings(b, b.exchange, b.queue, "queue"))
        elif b.to_exchange is not None:
            exchange_bindings.extend(_bindings(b, b.exchange, b.to_exchange, "exchange"))
    if delays is not None and delays.enabled:
        tier_exchanges, tier_queues, tier_bindings = _tiers(topology, delays)
        exchanges += tier_exchanges
        queues += tier_queues
        queue_bindings += [b for b in tier_bindings if b.destination_type == "queue"]
        exchange_bindings += [b for b in tier_bindings if b.destination_type == "exchange"]
    return DesiredTopology(
        tuple(exchanges), tuple(queues), _dedupe(queue_bindings + _downstream_first(exchange_bindings))
    )
