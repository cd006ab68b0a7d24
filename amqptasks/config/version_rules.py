"""The rules that depend on the broker's RabbitMQ version (pure).

``validate`` knows no broker: *rabbitmq* is None and what only some versions accept is a warning naming them.
``plan`` and ``apply`` read the version from the connection and check again: what that version refuses is an
error there, before anything is declared. Notes for the plan say what the version does on its own (the default
delivery limit of quorum queues).
"""

from __future__ import annotations

from amqptasks.config.diagnostics import Diagnostics
from amqptasks.config.model import Config, Queue
from amqptasks.config.versions import QUORUM_DEFAULT_DELIVERY_LIMIT, RabbitMQVersion

__all__ = ["check", "plan_notes"]


def check(config: Config, diags: Diagnostics, rabbitmq: RabbitMQVersion | None = None) -> None:
    """Record what *rabbitmq* (None: any supported version) refuses or handles differently."""
    for queue in config.topology.queues:
        what = f"queue {queue.name!r}"
        if queue.type == "quorum" and queue.max_priority is not None:
            _quorum_priority(queue, what, diags, rabbitmq)
        if queue.type == "classic" and not queue.durable and not queue.exclusive:
            _transient(queue, what, diags, rabbitmq)
    if config.delays.enabled and (rabbitmq is None or not rabbitmq.dead_letters_into_streams):
        _streams_behind_delays(config, diags)


def _quorum_priority(queue: Queue, what: str, diags: Diagnostics, rabbitmq: RabbitMQVersion | None) -> None:
    where = queue.where("max_priority")
    if rabbitmq is None:
        diags.warning(
            where,
            f"{what}: max_priority: quorum queues take message priorities only from RabbitMQ 4.0 (3.x refuses "
            "them; plan and apply check the broker's version); use a classic queue for RabbitMQ 3.x",
        )
    elif not rabbitmq.quorum_priorities:
        diags.error(
            where,
            f"{what}: max_priority: quorum queues have no message priorities on RabbitMQ {rabbitmq} (4.0 and "
            "later have them); use a classic queue",
        )


def _transient(queue: Queue, what: str, diags: Diagnostics, rabbitmq: RabbitMQVersion | None) -> None:
    message = (
        f"{what}: durable: false on a queue that is not exclusive: RabbitMQ 4.3 and later refuse transient "
        "non-exclusive queues; make it durable (a queue for one connection: exclusive: true)"
    )
    if rabbitmq is not None and rabbitmq.denies_transient_queues:
        diags.error(queue.where("durable"), message)
    else:
        diags.warning(queue.where("durable"), message)


def _streams_behind_delays(config: Config, diags: Diagnostics) -> None:
    topology = config.topology
    for queue in topology.queues:
        top = {b.exchange for b in topology.bindings if b.queue == queue.name}
        sources = sorted({qb.exchange for qb in queue.bindings} | top)
        if queue.type == "stream" and sources:
            diags.warning(
                queue.where("type"),
                f"queue {queue.name!r}: delayed messages published to {', '.join(map(repr, sources))} never reach "
                "this stream on RabbitMQ 3.x, which drops dead-lettered messages routed to a stream, and a delay "
                "ends with dead-lettering (RabbitMQ 4.0 stores them); on 3.x publish to it without a delay",
            )


def plan_notes(config: Config, rabbitmq: RabbitMQVersion | None) -> list[str]:
    """What the broker does by itself that a plan reader should know."""
    if rabbitmq is None:
        return []
    notes = []
    limit = rabbitmq.quorum_default_delivery_limit
    unlimited = [q.name for q in config.topology.queues if q.type == "quorum" and q.delivery_limit is None]
    if unlimited and limit is not None:
        assert limit == QUORUM_DEFAULT_DELIVERY_LIMIT
        names = ", ".join(map(repr, unlimited))
        notes.append(
            f"quorum queue{'s' if len(unlimited) > 1 else ''} {names} without delivery_limit: RabbitMQ {rabbitmq} "
            f"applies its default of {limit} (a message delivered {limit} times is dead-lettered, or dropped "
            "without dead_letter); set delivery_limit to choose"
        )
    elif unlimited:
        names = ", ".join(map(repr, unlimited))
        notes.append(
            f"quorum queue{'s' if len(unlimited) > 1 else ''} {names} without delivery_limit: RabbitMQ {rabbitmq} "
            "redelivers a returned message without limit (workers dead-letter one that killed them more than "
            "max_redeliveries times); set delivery_limit to have the broker stop it"
        )
    return notes
