"""Replaying dead letters to where they were first sent, and purging a dead-letter queue.

Each replayed message is a fresh copy (no x-death: RabbitMQ's cycle detection would drop a message that
comes back to a queue it was dead-lettered from), published mandatory with confirms; only once the
broker confirmed it is its dead letter acknowledged. One message is in flight at a time, and a stop request
is honoured between messages, so an interrupted replay neither loses nor duplicates anything.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

import pika
import pika.exceptions

from amqptasks.dlq.reader import DeadLetter, dead_letter, depth, queue_names
from amqptasks.errors import BrokerError, UnroutableError


@dataclass
class ReplayResult:
    replayed: int = 0
    skipped: int = 0
    interrupted: bool = False


def destination(letter: DeadLetter, exchange: str | None, routing_key: str | None) -> tuple[str, str]:
    """Where a dead letter goes back to: its original exchange and routing key, or the overrides."""
    target_exchange = letter.exchange if exchange is None else exchange
    if routing_key is not None:
        return target_exchange, routing_key
    if target_exchange == "":
        return "", letter.source
    return target_exchange, letter.routing_key


def fresh_properties(letter: DeadLetter, *, reset_retries: bool = True) -> pika.BasicProperties:
    """A replayed copy's properties. With *reset_retries* its ``retries`` header starts from 0 again: a task
    dead-lettered after its last retry would otherwise be dead-lettered again at its first failure."""
    props = letter.properties
    headers = letter.fresh_headers()
    if reset_retries and "retries" in headers:
        headers["retries"] = 0
    return pika.BasicProperties(
        content_type=props.content_type, content_encoding=props.content_encoding, headers=headers,
        delivery_mode=props.delivery_mode, priority=props.priority, correlation_id=props.correlation_id,
        reply_to=props.reply_to, expiration=props.expiration, message_id=props.message_id,
        timestamp=props.timestamp, type=props.type, user_id=props.user_id, app_id=props.app_id,
    )  # fmt: skip


def replay(
    connection: pika.BlockingConnection,
    queue: str,
    *,
    ids: Collection[str] | None = None,
    exchange: str | None = None,
    routing_key: str | None = None,
    stop_requested: Callable[[], bool] = lambda: False,
    progress: Callable[[DeadLetter], None] = lambda letter: None,
    reset_retries: bool = True,
) -> ReplayResult:
    """Replay the dead letters of *queue* whose id is in *ids* (all when None); the others stay, in order.

    Raises ``UnroutableError`` (that message stays in the DLQ) when a copy cannot be routed.
    """
    source, dlq = queue_names(queue)
    total = depth(connection, dlq)  # what is there now: dead letters arriving meanwhile wait for the next run
    channel = connection.channel()
    channel.confirm_delivery()
    result = ReplayResult()
    try:
        for _ in range(total):
            if stop_requested():
                result.interrupted = True
                break
            method, props, body = channel.basic_get(dlq, auto_ack=False)
            if method is None:
                break
            letter = dead_letter(source, method.delivery_tag, props, body)
            if ids is not None and letter.id not in ids:
                result.skipped += 1  # held unacked until the channel closes: it goes back to the queue
                continue
            target_exchange, key = destination(letter, exchange, routing_key)
            try:
                props = fresh_properties(letter, reset_retries=reset_retries)
                channel.basic_publish(target_exchange, key, body, props, mandatory=True)
            except pika.exceptions.UnroutableError:
                raise UnroutableError(target_exchange, key) from None
            except pika.exceptions.NackError:
                raise BrokerError(
                    f"the broker refused the copy of {letter.id} (basic.nack); it stays in {dlq!r}"
                ) from None
            except pika.exceptions.ChannelClosedByBroker as exc:
                raise BrokerError(f"cannot replay {letter.id} to {target_exchange!r}: {exc.reply_text}") from None
            channel.basic_ack(method.delivery_tag)
            result.replayed += 1
            progress(letter)
    finally:
        if channel.is_open:
            channel.close()  # unacked (skipped or unroutable) messages return to the DLQ
    return result


def purge(connection: pika.BlockingConnection, queue: str) -> int:
    """Delete every ready message of the dead-letter queue; returns how many."""
    _, dlq = queue_names(queue)
    depth(connection, dlq)  # a clear error for a missing queue
    channel = connection.channel()
    try:
        return int(channel.queue_purge(dlq).method.message_count)
    finally:
        if channel.is_open:
            channel.close()
