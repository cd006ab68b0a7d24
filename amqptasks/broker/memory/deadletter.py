"""Dead-lettering as RabbitMQ 3.x does it (pure): the ``x-death`` history and the cycle rule.

A dead-lettered message is published again to the queue's ``x-dead-letter-exchange`` with its
``x-dead-letter-routing-key`` (its ``CC`` header removed) or, without one, every routing key it had (its own, and
those of its ``CC`` and ``BCC`` headers). Its ``expiration`` property is removed (kept
in x-death as ``original-expiration``). ``x-death`` holds one entry per (queue, reason), most recent first; an
entry seen again has its ``count`` raised and moves to the front (its time stays the first one); the older
entries are reordered as RabbitMQ's grouping does (see ``_grouped``). The first death
is also kept in the ``x-first-death-*`` headers.

Cycle rule (rabbit_dead_letter:detect_cycles): when the reason is not ``rejected``, a target queue that already
appears in x-death is skipped if no entry up to and including its own was a rejection -- the message went round
"fully automatically" and would loop for ever. This is what drops a re-delayed message that still carries the
x-death of its first trip (Celery #9867).
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any

from amqptasks.broker.memory.message import Message

__all__ = ["dead_lettered", "is_cycle"]


def dead_lettered(
    message: Message, queue: str, reason: str, now: float, exchange: str, routing_key: str | None
) -> Message:
    """*message* as it leaves *queue* for dead-letter *exchange*, with *routing_key* or its own."""
    headers = dict(message.headers)
    info: dict[str, Any] = {
        "reason": reason,
        "queue": queue,
        "time": datetime.datetime.fromtimestamp(int(now), datetime.UTC),
        "exchange": message.exchange,
        "routing-keys": [message.routing_key, *message.cc],  # BCC keys are never shown
    }
    properties = dict(message.properties)
    expiration = properties.pop("expiration", None)
    if expiration is not None:
        info["original-expiration"] = expiration
    deaths = headers.get("x-death")
    if not isinstance(deaths, list):
        headers["x-first-death-reason"] = reason
        headers["x-first-death-queue"] = queue
        headers["x-first-death-exchange"] = message.exchange
        headers["x-death"] = [{"count": 1, **info}]
    else:
        grouped = _grouped([d for d in deaths if isinstance(d, Mapping)])
        same = [d for d in grouped if d.get("queue") == queue and d.get("reason") == reason]
        others = [d for d in grouped if not (d.get("queue") == queue and d.get("reason") == reason)]
        entry = {**same[0], "count": int(same[0].get("count", 0)) + 1} if same else {"count": 1, **info}
        headers["x-death"] = [entry, *others]
    properties["headers"] = headers
    if routing_key is None:  # routed again with every key it had, BCC's included
        return Message(message.body, properties, exchange, message.routing_key, message.cc, message.bcc)
    # x-dead-letter-routing-key replaces every key, and the CC header goes with the keys it named.
    properties["headers"] = {k: v for k, v in headers.items() if k != "CC"}
    return Message(message.body, properties, exchange, routing_key)


def _grouped(deaths: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """rabbit_dead_letter:group_by_queue_and_reason/1: one entry per (queue, reason), the first seen of each. With
    two or more entries its fold also reverses them -- so RabbitMQ 3.x's order is "newest first, then the older
    ones reversed at every death", which we reproduce because consumers see it."""
    if len(deaths) < 2:
        return deaths
    firsts: dict[tuple[Any, Any], Mapping[str, Any]] = {}
    for death in deaths:
        firsts.setdefault((death.get("queue"), death.get("reason")), death)
    return list(reversed(firsts.values()))


def is_cycle(queue: str, deaths: Sequence[Any]) -> bool:
    """Whether dead-lettering into *queue* closes a cycle with no rejection in it (the message is then dropped)."""
    for position, death in enumerate(deaths):
        if isinstance(death, Mapping) and death.get("queue") == queue:
            cycle = deaths[: position + 1]
            return all(isinstance(d, Mapping) and d.get("reason") != "rejected" for d in cycle)
    return False
