"""The desired topology → a RabbitMQ definitions document (pure).

The document is what ``rabbitmqctl import_definitions FILE`` and ``POST /api/definitions`` accept: the
vhost, its exchanges, queues and bindings, each naming the vhost. Users, permissions and policies are
left out on purpose: they are the operator's, not the application's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from amqptasks.topology.desired import BindingDecl, DesiredTopology, ExchangeDecl, QueueDecl

__all__ = ["Definitions", "to_definitions"]


@dataclass(frozen=True)
class Definitions:
    """A definitions document and what could not go into it.

    ``document`` is ready for ``json.dump``; ``warnings`` are one line each, for the user to read.
    """

    document: dict[str, Any]
    warnings: tuple[str, ...] = field(default=())


def to_definitions(topology: DesiredTopology, vhost: str, *, rabbitmq_version: str = "3.10.0") -> Definitions:
    """The definitions that create ``topology`` in ``vhost``.

    Exclusive queues (and the bindings to them) are left out, with a warning: a definitions import
    has no connection to own them, so RabbitMQ cannot create them.
    """
    exclusive = [q.name for q in topology.queues if q.exclusive]
    warnings = [
        f"queue {name!r} is exclusive and left out of the definitions (with its bindings): an exclusive queue "
        "belongs to the connection that declares it, so only a running worker can create it"
        for name in exclusive
    ]
    bindings = [b for b in topology.bindings if not (b.destination_type == "queue" and b.destination in exclusive)]
    document: dict[str, Any] = {
        "rabbit_version": rabbitmq_version,
        "rabbitmq_version": rabbitmq_version,
        "vhosts": [{"name": vhost}],
        "exchanges": [_exchange(e, vhost) for e in topology.exchanges],
        "queues": [_queue(q, vhost) for q in topology.queues if not q.exclusive],
        "bindings": [_binding(b, vhost) for b in bindings],
    }
    return Definitions(document, tuple(warnings))


def _exchange(e: ExchangeDecl, vhost: str) -> dict[str, Any]:
    return {
        "name": e.name,
        "vhost": vhost,
        "type": e.type,
        "durable": e.durable,
        "auto_delete": e.auto_delete,
        "internal": e.internal,
        "arguments": dict(e.arguments),
    }


def _queue(q: QueueDecl, vhost: str) -> dict[str, Any]:
    # The queue type travels as the x-queue-type argument; that is how RabbitMQ 3.x exports it too.
    return {
        "name": q.name,
        "vhost": vhost,
        "durable": q.durable,
        "auto_delete": q.auto_delete,
        "arguments": dict(q.arguments),
    }


def _binding(b: BindingDecl, vhost: str) -> dict[str, Any]:
    return {
        "source": b.source,
        "vhost": vhost,
        "destination": b.destination,
        "destination_type": b.destination_type,
        "routing_key": b.routing_key,
        "arguments": dict(b.arguments),
    }
