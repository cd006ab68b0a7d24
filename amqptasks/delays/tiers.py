"""Broker-side delays built from TTL tiers and dead-lettering (pure: no pika, no I/O).

RabbitMQ 3.x has no delay plugin, and holding messages in a worker until they fall due runs into the
consumer timeout. Instead, 32 levels L = 31..0 each have a headers exchange and a classic queue named
``amqptasks.delay.L``; the queue holds a message for exactly 2**L ms (``x-message-ttl``) and then
dead-letters it to the exchange of level L-1 (level 0: ``amqptasks.delay.exit``). A message delayed by D
ms carries one header per level, ``amqptasks.dL`` = "1" or "0", the bits of D: at level L, "1" routes it
into the queue, "0" on to the next exchange. It waits in exactly the levels whose bit is set, so its total
wait is D and it is never early. The tier queues set no ``x-dead-letter-routing-key``, so the message keeps
its original routing key all the way.

At the exit, the ``amqptasks.target`` header (``exchange:<name>`` or ``queue:<name>``) matches one binding to
the exchange the message was meant for, where it is routed as if just published: same routing key, headers
and priority. ``queue:`` targets serve publishing by queue name through the default exchange, which cannot
be a binding's destination. A message that nothing routes when due goes to the alternate exchange
``amqptasks.unroutable``, whose queue keeps only messages marked ``amqptasks.delayed`` — so an immediate
mandatory publish that matches nothing is still returned to its publisher.

Streams cannot receive delayed messages on RabbitMQ 3.x: the broker silently drops a dead-lettered message
routed to a stream (its stream queue type ignores the deliveries dead-lettering makes). The exit is therefore
not bound to streams, so a delayed message for a stream by name is kept by ``amqptasks.unroutable``; one that
an exchange routes to a stream is lost for that stream, which ``validate`` warns about.

Two rules for whoever publishes through :func:`route`:

- Never set the AMQP ``expiration`` property on a delayed message: a per-message TTL applies in every queue
  the message passes through, the tiers included, and would make it arrive early (or expire there).
  Keep a task's ``expires`` as a header and check it when the message is consumed.
- A message that is delayed again (a retry with backoff) must be published fresh, without the ``x-death``
  headers the tiers added: RabbitMQ drops a message whose dead-letter history shows it already went round
  a cycle (Celery #9867). :func:`route` strips them from the headers it is given.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from amqptasks.config.diagnostics import NOWHERE, Location
from amqptasks.constants import (
    DELAY_EXIT_EXCHANGE,
    DELAY_LEVELS,
    DELAY_TARGET_HEADER,
    DELAYED_HEADER,
    UNROUTABLE_EXCHANGE,
    delay_bit_header,
    delay_tier_name,
)
from amqptasks.message.protocol import DEATH_HEADERS
from amqptasks.topology.desired import BindingDecl, ExchangeDecl, QueueDecl

#: Number of tiers; level L holds a message for 2**L ms.
LEVELS = DELAY_LEVELS
#: The longest delay the tiers can express: every level's bit set (about 49.7 days).
MAX_DELAY_MS = 2**LEVELS - 1
#: Where a delayed message is published: the highest level, which every delay passes through.
ENTRY_EXCHANGE = delay_tier_name(LEVELS - 1)


def _next_exchange(level: int) -> str:
    return delay_tier_name(level - 1) if level > 0 else DELAY_EXIT_EXCHANGE


def _match(header: str, value: str) -> dict[str, Any]:
    return {"x-match": "all", header: value}


def exchange_target(name: str) -> str:
    return f"exchange:{name}"


def queue_target(name: str) -> str:
    return f"queue:{name}"


def tier_topology(
    exchanges: Sequence[str], queues: Sequence[str], *, loc: Location = NOWHERE
) -> tuple[list[ExchangeDecl], list[QueueDecl], list[BindingDecl]]:
    """The tiers, the exit bound to each of *exchanges* and *queues*, and the unroutable alternate exchange.

    Bindings are queue bindings first, then exchange-to-exchange ones. *loc* is recorded on every declaration.
    """
    decl_exchanges: list[ExchangeDecl] = []
    decl_queues: list[QueueDecl] = []
    queue_bindings: list[BindingDecl] = []
    exchange_bindings: list[BindingDecl] = []
    for level in reversed(range(LEVELS)):
        name, bit = delay_tier_name(level), delay_bit_header(level)
        decl_exchanges.append(ExchangeDecl(name, "headers", loc=loc))
        # No x-dead-letter-routing-key: the message keeps the routing key it was published with.
        arguments = {"x-message-ttl": 2**level, "x-dead-letter-exchange": _next_exchange(level)}
        decl_queues.append(QueueDecl(name, arguments=arguments, loc=loc))
        queue_bindings.append(BindingDecl(name, name, "queue", "", _match(bit, "1"), loc))
        exchange_bindings.append(BindingDecl(name, _next_exchange(level), "exchange", "", _match(bit, "0"), loc))
    exit_arguments = {"alternate-exchange": UNROUTABLE_EXCHANGE}
    decl_exchanges.append(ExchangeDecl(DELAY_EXIT_EXCHANGE, "headers", arguments=exit_arguments, loc=loc))
    decl_exchanges.append(ExchangeDecl(UNROUTABLE_EXCHANGE, "headers", loc=loc))
    decl_queues.append(QueueDecl(UNROUTABLE_EXCHANGE, loc=loc))
    unroutable = BindingDecl(UNROUTABLE_EXCHANGE, UNROUTABLE_EXCHANGE, "queue", "", _match(DELAYED_HEADER, "1"), loc)
    queue_bindings.append(unroutable)
    for queue in queues:
        target = _match(DELAY_TARGET_HEADER, queue_target(queue))
        queue_bindings.append(BindingDecl(DELAY_EXIT_EXCHANGE, queue, "queue", "", target, loc))
    for exchange in exchanges:
        target = _match(DELAY_TARGET_HEADER, exchange_target(exchange))
        exchange_bindings.append(BindingDecl(DELAY_EXIT_EXCHANGE, exchange, "exchange", "", target, loc))
    return decl_exchanges, decl_queues, queue_bindings + exchange_bindings


@dataclass(frozen=True)
class DelayRoute:
    """Publish the message to *exchange* with these *headers* and its own routing key and properties."""

    exchange: str
    headers: dict[str, Any]


def delay_bits(delay_ms: float) -> int:
    """*delay_ms* rounded up to whole milliseconds (never early), checked against the tiers' range."""
    if isinstance(delay_ms, bool) or not isinstance(delay_ms, int | float) or not math.isfinite(delay_ms):
        raise ValueError(f"delay must be a finite number of milliseconds, got {delay_ms!r}")
    if delay_ms < 0:
        raise ValueError(f"delay must be 0 ms or more, got {delay_ms} ms; publish directly when it is already due")
    ms = math.ceil(delay_ms)
    if ms > MAX_DELAY_MS:
        raise ValueError(
            f"delay of {delay_ms} ms is longer than the broker-side delay tiers can hold: at most "
            f"{MAX_DELAY_MS} ms (2**{LEVELS} - 1 ms, about 49.7 days); use a scheduler for dates that far ahead"
        )
    return ms


def route(
    delay_ms: float,
    *,
    exchange: str | None = None,
    queue: str | None = None,
    headers: Mapping[str, Any] | None = None,
) -> DelayRoute:
    """How to publish a message so that it reaches *exchange* (or *queue*) *delay_ms* from now.

    Give exactly one target: an exchange declared in the YAML, or a queue (published to by name through
    the default exchange; ``exchange=""`` with *queue* says the same). *headers* are the message's own;
    x-death and the other dead-letter headers are left out, and the delay headers added.
    """
    ms = delay_bits(delay_ms)
    if exchange == "":
        exchange = None
        if queue is None:
            raise ValueError("the default exchange ('') routes by queue name: give queue= instead")
    if (exchange is None) == (queue is None):
        raise ValueError("give exactly one delay target: exchange= or queue=")
    if queue == "":
        raise ValueError("queue= must name a queue")
    target = exchange_target(exchange) if exchange is not None else queue_target(str(queue))
    out = {k: v for k, v in (headers or {}).items() if k not in DEATH_HEADERS}
    out.update({delay_bit_header(level): "1" if ms >> level & 1 else "0" for level in range(LEVELS)})
    out[DELAY_TARGET_HEADER] = target
    out[DELAYED_HEADER] = "1"
    return DelayRoute(ENTRY_EXCHANGE, out)
