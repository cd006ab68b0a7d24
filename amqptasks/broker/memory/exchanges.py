"""Exchanges, bindings and routing through them (pure), as rabbit_exchange:route/2 does it.

Routing starts at one exchange and follows exchange-to-exchange bindings, visiting each exchange once (cycles are
legal). An exchange whose own bindings match nothing at all -- no queue and no exchange -- hands the message to its
``alternate-exchange``, with the same routing key. Each queue receives at most one copy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from amqptasks.broker.memory.matching import matches

__all__ = ["Binding", "MemoryExchange", "route"]


@dataclass(frozen=True)
class Binding:
    source: str
    destination: str
    destination_type: Literal["queue", "exchange"]
    routing_key: str = ""
    arguments: Mapping[str, Any] = field(default_factory=dict)

    def identity(self) -> tuple[str, str, str, str, tuple[tuple[str, str], ...]]:
        args = tuple(sorted((str(k), repr(v)) for k, v in self.arguments.items()))
        return (self.source, self.destination_type, self.destination, self.routing_key, args)


@dataclass
class MemoryExchange:
    name: str
    type: str
    durable: bool = True
    auto_delete: bool = False
    internal: bool = False
    arguments: dict[str, Any] = field(default_factory=dict)
    bindings: list[Binding] = field(default_factory=list)

    @property
    def alternate(self) -> str | None:
        value = self.arguments.get("alternate-exchange")
        return None if value is None else str(value)

    def description(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "durable": self.durable,
            "auto_delete": self.auto_delete,
            "internal": self.internal,
            "arguments": self.arguments,
        }

    def matching(self, routing_key: str, headers: Mapping[str, Any] | None) -> list[Binding]:
        return [b for b in self.bindings if matches(self.type, b.routing_key, b.arguments, routing_key, headers)]


def route(
    start: str,
    routing_keys: Sequence[str],
    headers: Mapping[str, Any] | None,
    exchange: Callable[[str], MemoryExchange | None],
    queue_exists: Callable[[str], bool],
) -> list[str]:
    """The queues a message published to exchange *start* reaches, in the order first reached. *routing_keys*: its
    routing key, then those its ``CC`` and ``BCC`` headers add (sender-selected distribution).

    The default exchange (``""``) routes to the queue named by each routing key, if it exists.
    """
    if start == "":
        return list(dict.fromkeys(key for key in routing_keys if queue_exists(key)))
    queues: list[str] = []
    seen: set[str] = set()
    work = [start]
    while work:
        name = work.pop(0)
        if name in seen:
            continue
        seen.add(name)
        x = exchange(name)
        if x is None:
            continue
        # Each binding once, however many of the keys it matches.
        found = list({id(b): b for key in routing_keys for b in x.matching(key, headers)}.values())
        for binding in found:
            if binding.destination_type == "exchange":
                work.append(binding.destination)
            elif binding.destination not in queues and queue_exists(binding.destination):
                queues.append(binding.destination)
        if not found and x.alternate is not None:
            work.append(x.alternate)
    return queues
