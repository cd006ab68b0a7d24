"""Whether the topology the YAML declares routes a destination anywhere (pure: no broker is asked).

Used before a workflow's first message is published: a step that could never be delivered is refused
with nothing sent, rather than found out when the step before it has run. Only what can be known is
judged: with no topology in the YAML (objects managed elsewhere), a built-in ``amq.*`` exchange, or a
headers exchange (which routes on headers not known yet), the answer is "can't tell" and nothing is refused.
"""

from __future__ import annotations

from amqptasks.broker.memory.matching import matches
from amqptasks.config.diagnostics import did_you_mean
from amqptasks.config.model import Topology
from amqptasks.constants import RESERVED_PREFIX
from amqptasks.tasks.routing import Destination
from amqptasks.topology.desired import DesiredTopology, desired


class Reach:
    """Answers for one topology, each destination worked out once."""

    def __init__(self, topology: Topology) -> None:
        self._topology: DesiredTopology | None = desired(topology) if topology.queues or topology.exchanges else None
        self._answers: dict[Destination, str | None] = {}

    def problem(self, destination: Destination) -> str | None:
        """Why a message to *destination* would reach no queue, or None (it would, or it can't be told)."""
        if destination not in self._answers:
            self._answers[destination] = self._problem(destination)
        return self._answers[destination]

    def _problem(self, destination: Destination) -> str | None:
        t = self._topology
        if t is None:
            return None
        if destination.exchange == "":
            queues = [q.name for q in t.queues]
            if destination.routing_key in queues:
                return None
            return (f"queue {destination.routing_key!r} is not declared in the topology"
                    f"{did_you_mean(destination.routing_key, queues)}")  # fmt: skip
        return self._through(t, destination.exchange, destination.routing_key, set())

    def _through(self, t: DesiredTopology, exchange: str, routing_key: str, seen: set[str]) -> str | None:
        if exchange.startswith(RESERVED_PREFIX) or exchange in seen:
            return None
        seen.add(exchange)
        decl = t.exchange(exchange)
        if decl is None:
            names = [e.name for e in t.exchanges]
            return f"exchange {exchange!r} is not declared in the topology{did_you_mean(exchange, names)}"
        if decl.type == "headers":
            return None
        for b in t.bindings:
            if b.source != exchange or not matches(decl.type, b.routing_key, b.arguments, routing_key, None):
                continue
            if b.destination_type == "queue" or self._through(t, b.destination, routing_key, seen) is None:
                return None
        alternate = decl.arguments.get("alternate-exchange")
        if isinstance(alternate, str) and self._through(t, alternate, routing_key, seen) is None:
            return None
        return f"no binding of {decl.type} exchange {exchange!r} takes routing key {routing_key!r}"
