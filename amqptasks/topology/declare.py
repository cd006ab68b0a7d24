"""One declaration → the AMQP method that makes (or removes) it, on any pika-style channel."""

from __future__ import annotations

from typing import Any

from amqptasks.topology.desired import BindingDecl, ExchangeDecl, QueueDecl


def declare(channel: Any, decl: ExchangeDecl | QueueDecl | BindingDecl) -> None:
    """Declare *decl*: creates it, or checks that an existing one is equivalent (406 if not)."""
    if isinstance(decl, ExchangeDecl):
        channel.exchange_declare(
            decl.name,
            decl.type,
            durable=decl.durable,
            auto_delete=decl.auto_delete,
            internal=decl.internal,
            arguments=dict(decl.arguments),
        )
    elif isinstance(decl, QueueDecl):
        channel.queue_declare(
            decl.name,
            durable=decl.durable,
            exclusive=decl.exclusive,
            auto_delete=decl.auto_delete,
            arguments=dict(decl.arguments),
        )
    else:
        bind = channel.queue_bind if decl.destination_type == "queue" else channel.exchange_bind
        bind(decl.destination, decl.source, routing_key=decl.routing_key, arguments=dict(decl.arguments))


def unbind(channel: Any, decl: BindingDecl) -> None:
    method = channel.queue_unbind if decl.destination_type == "queue" else channel.exchange_unbind
    method(decl.destination, decl.source, routing_key=decl.routing_key, arguments=dict(decl.arguments))
