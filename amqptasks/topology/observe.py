"""Read what the broker holds: through the management API, or by AMQP probing when it is not there."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pika
import pika.exceptions

from amqptasks.broker.management import ManagementClient
from amqptasks.errors import BrokerError
from amqptasks.topology.declare import declare
from amqptasks.topology.desired import BindingDecl, DesiredTopology, ExchangeDecl, QueueDecl
from amqptasks.topology.plan import Action, Change, Difference, Observed, Plan, make_plan


def observe_http(client: ManagementClient, vhost: str) -> Observed:
    exchanges = {e["name"]: e for e in client.list_exchanges(vhost)}
    queues = {q["name"]: q for q in client.list_queues(vhost)}
    bindings = tuple(
        BindingDecl(
            b["source"],
            b["destination"],
            "exchange" if b["destination_type"] == "exchange" else "queue",
            b.get("routing_key", ""),
            b.get("arguments") or {},
        )
        for b in client.list_bindings(vhost)
        if b["source"] != ""  # the default exchange's implicit bindings are not ours to manage
    )
    return Observed(exchanges, queues, bindings)


# --- AMQP probing --------------------------------------------------------------------------------

_INEQUIVALENT = re.compile(
    r"inequivalent arg '(?P<arg>[^']+)' for \w+ .* in vhost .*: "
    r"received (?P<received>none|'[^']*'|the value '[^']*' of type '\w+') "
    r"but current is (?P<current>none|'[^']*'|the value '[^']*' of type '\w+')"
)
_VALUE = re.compile(r"'([^']*)'")


def _probe_value(text: str) -> str | int | None:
    match = _VALUE.search(text)
    if not match:
        return None
    value = match.group(1)
    return int(value) if value.lstrip("-").isdigit() else value


def conflict_from_broker_text(text: str, locs: dict[str, Any]) -> tuple[Difference, ...]:
    """Turn RabbitMQ's PRECONDITION_FAILED text into a :class:`Difference` (the first one it found)."""
    match = _INEQUIVALENT.search(text)
    if not match:
        return ()
    arg = match.group("arg")
    return (
        Difference(arg, _probe_value(match.group("current")), _probe_value(match.group("received")), locs.get(arg)),
    )


class Prober:
    """Learns, per declared object, whether it exists and is equivalent — without the management API.

    Existence: a passive declare (404 = missing). Equivalence: an active declare with the desired
    properties on an object that exists — RabbitMQ compares and answers 406 on any difference, and
    changes nothing otherwise. The object could in theory be deleted between the two frames, in
    which case the active declare would create it: use the management API when that matters.
    """

    def __init__(self, connection: pika.BlockingConnection) -> None:
        self.connection = connection

    def attempt(self, action: Callable[[Any], object]) -> tuple[int, str]:
        channel = self.connection.channel()
        try:
            action(channel)
        except pika.exceptions.ChannelClosedByBroker as exc:
            return exc.reply_code, exc.reply_text
        except pika.exceptions.AMQPError as exc:
            raise BrokerError(f"probing the broker failed: {exc!r}") from None
        channel.close()
        return 200, ""

    def _change(self, kind: str, name: str, decl: ExchangeDecl | QueueDecl, passive: Callable[[Any], object]) -> Change:
        code, _ = self.attempt(passive)
        if code == 404:
            return Change("create", kind, name, decl=decl)  # type: ignore[arg-type]
        code, text = self.attempt(lambda channel: declare(channel, decl))
        if code == 200:
            return Change("unchanged", kind, name, decl=decl)  # type: ignore[arg-type]
        diffs = conflict_from_broker_text(text, dict(decl.locs))
        return Change("conflict", kind, name, diffs, decl=decl, detail=text)  # type: ignore[arg-type]

    def exchange(self, ex: ExchangeDecl) -> Change:
        return self._change("exchange", ex.name, ex, lambda ch: ch.exchange_declare(ex.name, passive=True))

    def queue(self, q: QueueDecl) -> Change:
        return self._change("queue", q.name, q, lambda ch: ch.queue_declare(q.name, passive=True))


def probe_plan(desired: DesiredTopology, connection: pika.BlockingConnection) -> Plan:
    prober = Prober(connection)
    changes = [prober.exchange(e) for e in desired.exchanges] + [prober.queue(q) for q in desired.queues]
    creating = {c.name for c in changes if c.action == "create"}
    for b in desired.bindings:
        # Bindings cannot be read over AMQP. One whose ends are new is certainly missing; the others
        # are declared again by apply, which is idempotent.
        action: Action = "create" if {b.source, b.destination} & creating else "ensure"
        changes.append(Change(action, "binding", b.describe(), decl=b))
    note = (
        "management API unreachable: read by AMQP probing; bindings cannot be listed ('ensure': apply re-declares them)"
    )
    return Plan(tuple(changes), "AMQP probe", (note,))


__all__ = ["Observed", "make_plan", "observe_http", "probe_plan"]
