"""The sending side of broadcast control: publish one command to every worker, collect replies for a while.

Replies come back over RabbitMQ's direct reply-to: the sender consumes ``amq.rabbitmq.reply-to`` (no-ack)
*before* publishing, on the same channel, so no queue is declared and a reply cannot arrive unheard.

``revoke()`` also stores the revocation (control/stored.py) before it is broadcast, so that workers started
later know it.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from typing import Any

import pika

from amqptasks.broker.memory import broker_for, is_memory_url
from amqptasks.config.model import Config
from amqptasks.constants import CONTROL_EXCHANGE, DIRECT_REPLY_TO
from amqptasks.control import stored
from amqptasks.topology.live import connect


def broadcast(
    config: Config, command: str, arguments: dict[str, Any] | None = None, *, timeout: float = 1.0, reply: bool = True
) -> list[dict[str, Any]]:
    """Send *command* to every running worker; the replies that arrive within *timeout* seconds, in arrival order.

    Each reply is ``{"hostname": ..., "ok": ...}`` or ``{"hostname": ..., "error": ...}``.
    """
    connection = connect(config.broker, f"control {command}")
    try:
        channel = connection.channel()
        channel.exchange_declare(CONTROL_EXCHANGE, "fanout", durable=True)
        command_id = uuid.uuid4().hex
        replies: list[dict[str, Any]] = []

        def on_reply(_ch: Any, _method: Any, props: pika.BasicProperties, body: bytes) -> None:
            if props.correlation_id != command_id:
                return
            with contextlib.suppress(ValueError):
                replies.append(json.loads(body))

        if reply:
            channel.basic_consume(DIRECT_REPLY_TO, on_reply, auto_ack=True)
        body = {"command": command, "arguments": arguments or {}, "id": command_id,
                "reply_to": DIRECT_REPLY_TO if reply else None}  # fmt: skip
        props = pika.BasicProperties(
            content_type="application/json", correlation_id=command_id, reply_to=DIRECT_REPLY_TO if reply else None,
            delivery_mode=1, expiration=str(int(max(timeout, 1.0) * 1000)),
        )  # fmt: skip
        channel.basic_publish(CONTROL_EXCHANGE, "", json.dumps(body).encode(), props)
        deadline = time.monotonic() + timeout
        while reply and (remaining := deadline - time.monotonic()) > 0:
            connection.process_data_events(time_limit=min(remaining, 0.1))
        return replies
    finally:
        if connection.is_open:
            connection.close()


def revoke(config: Config, task_id: str, *, terminate: bool = False, timeout: float = 1.0) -> list[dict[str, Any]]:
    """Never run *task_id* (and, with *terminate*, stop it in the worker running it now); the running workers' replies.

    The revocation is stored on the broker (the ``amqptasks.revoked`` stream) and broadcast: a worker started later
    reads it back when it starts. Every worker honours it for 3 hours from now (as Celery), so a task still queued
    or delayed past that runs. No reply means no worker runs now, not that the revoke was lost. Raises
    :class:`~amqptasks.errors.PublishError`, with nothing broadcast, when it cannot be stored.
    """
    if is_memory_url(config.broker.url):  # the in-process broker: every worker that could run it is here
        broker_for(config.broker.url).revocations[task_id] = time.time()
        return []
    stored.store(config, task_id)
    return broadcast(config, "revoke", {"task_id": task_id, "terminate": terminate}, timeout=timeout)


def rate_limit(config: Config, task: str, rate: str | None, *, timeout: float = 1.0) -> list[dict[str, Any]]:
    """Change *task*'s rate limit ("10/m") in every running worker; None goes back to the task's own."""
    return broadcast(config, "rate_limit", {"task": task, "rate": rate}, timeout=timeout)
