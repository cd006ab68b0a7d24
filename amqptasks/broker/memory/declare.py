"""Checks RabbitMQ 3.x makes when an exchange or queue is declared (pure): reserved names, properties a queue
type refuses, and equivalence with what exists -- each failure raised with RabbitMQ's own error text."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from amqptasks.broker.memory.errors import ACCESS_REFUSED, PRECONDITION_FAILED, ChannelError
from amqptasks.broker.memory.values import describe, equivalent, shown
from amqptasks.constants import RESERVED_PREFIX

__all__ = ["check_exchange_equivalence", "check_new_queue", "check_queue_equivalence", "check_reserved"]

#: The queue arguments RabbitMQ compares on redeclaration (rabbit_amqqueue:declare_args/0); others are ignored.
COMPARED_QUEUE_ARGS = (
    "x-expires", "x-message-ttl", "x-dead-letter-exchange", "x-dead-letter-routing-key", "x-max-length",
    "x-max-length-bytes", "x-max-in-memory-length", "x-max-in-memory-bytes", "x-max-priority", "x-overflow",
    "x-queue-mode", "x-single-active-consumer", "x-queue-type", "x-quorum-initial-group-size", "x-max-age",
    "x-stream-max-segment-size-bytes", "x-initial-cluster-size", "x-queue-leader-locator", "x-delivery-limit",
)  # fmt: skip
#: Exchange arguments compared on redeclaration.
COMPARED_EXCHANGE_ARGS = ("alternate-exchange",)
#: Arguments a quorum queue refuses (RabbitMQ 3.10).
_QUORUM_INVALID_ARGS = ("x-max-priority", "x-queue-mode")


def resource(kind: str, name: str, vhost: str) -> str:
    return f"{kind} '{name}' in vhost '{vhost}'"


def check_reserved(kind: str, name: str) -> None:
    if name.startswith(RESERVED_PREFIX):
        raise ChannelError(ACCESS_REFUSED, f"{kind} name '{name}' contains reserved prefix 'amq.*'")


def check_new_queue(name: str, vhost: str, durable: bool, exclusive: bool, arguments: Mapping[str, Any]) -> None:
    """What a queue type refuses outright (quorum queues must be durable, take no priorities...)."""
    if arguments.get("x-queue-type") not in ("quorum", "stream"):
        return
    where = resource("queue", name, vhost)
    if not durable:
        raise ChannelError(PRECONDITION_FAILED, f"invalid property 'non-durable' for {where}")
    if exclusive:
        raise ChannelError(PRECONDITION_FAILED, f"invalid property 'exclusive-declare' for {where}")
    if arguments.get("x-queue-type") == "quorum":
        for key in _QUORUM_INVALID_ARGS:
            if key in arguments:
                raise ChannelError(
                    PRECONDITION_FAILED, f"invalid arg '{key}' for {where} of queue type rabbit_quorum_queue"
                )


def _field(what: str, key: str, current: Any, received: Any) -> None:
    if current != received:
        raise ChannelError(
            PRECONDITION_FAILED,
            f"inequivalent arg '{key}' for {what}: received {shown(received)} but current is {shown(current)}",
        )


def _arguments(what: str, keys: tuple[str, ...], current: Mapping[str, Any], received: Mapping[str, Any]) -> None:
    for key in keys:
        have, want = current.get(key), received.get(key)
        if have is None and want is None:
            continue
        if key == "x-queue-type" and {have, want} <= {None, "classic"}:
            continue  # a queue declared without a type is classic
        if have is not None and want is not None:
            if not equivalent(have, want):
                # Both given: bare values, even for the same value in another type class ('1000' and 1000).
                raise ChannelError(
                    PRECONDITION_FAILED,
                    f"inequivalent arg '{key}' for {what}: received {shown(want)} but current is {shown(have)}",
                )
            continue
        raise ChannelError(
            PRECONDITION_FAILED,
            f"inequivalent arg '{key}' for {what}: received {describe(want)} but current is {describe(have)}",
        )


def check_exchange_equivalence(name: str, vhost: str, current: Mapping[str, Any], received: Mapping[str, Any]) -> None:
    """*current* and *received*: type, durable, auto_delete, internal, arguments (rabbit_exchange order)."""
    what = resource("exchange", name, vhost)
    for key in ("type", "durable", "auto_delete", "internal"):
        _field(what, key, current[key], received[key])
    _arguments(what, COMPARED_EXCHANGE_ARGS, current["arguments"], received["arguments"])


def check_queue_equivalence(name: str, vhost: str, current: Mapping[str, Any], received: Mapping[str, Any]) -> None:
    """*current* and *received*: durable, auto_delete, arguments (rabbit_amqqueue:assert_equivalence order)."""
    what = resource("queue", name, vhost)
    for key in ("durable", "auto_delete"):
        _field(what, key, current[key], received[key])
    _arguments(what, COMPARED_QUEUE_ARGS, current["arguments"], received["arguments"])
