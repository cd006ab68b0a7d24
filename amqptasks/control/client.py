"""The sending side of broadcast control, in Celery's pidbox protocol (control/pidbox.py): publish one command
to every worker -- ours and Celery's -- and collect their replies for a while.

The sender declares its reply queue (exclusive, auto-delete) bound to ``reply.celery.pidbox`` with its own oid
and consumes it *before* publishing, so a reply cannot arrive unheard.

``revoke()`` also stores the revocation (control/stored.py) before it is broadcast, so that workers of ours
started later know it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from typing import Any

import pika

from amqptasks.broker.memory import broker_for, is_memory_url
from amqptasks.config.model import Config
from amqptasks.control import pidbox, stored
from amqptasks.topology.live import connect


def broadcast(
    config: Config, command: str, arguments: dict[str, Any] | None = None, *, timeout: float = 1.0, reply: bool = True,
    destination: Sequence[str] | None = None, limit: int | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """Send *command* (Celery's names and arguments: ``ping``, ``revoke`` with ``task_id``...) to every running
    worker, or to the hostnames in *destination*; the replies that arrive within *timeout* seconds (or the first
    *limit*), in arrival order.

    Each reply is ``{"hostname": ..., "ok": ...}`` or ``{"hostname": ..., "error": ...}``.
    """
    connection = connect(config.broker, f"control {command}")
    try:
        channel = connection.channel()
        channel.exchange_declare(pidbox.EXCHANGE, "fanout", durable=False)
        oid = str(uuid.uuid4())
        replies: list[dict[str, Any]] = []
        message = pidbox.request(command, arguments, reply_to_oid=oid if reply else None, destination=destination)
        if reply:
            channel.exchange_declare(pidbox.REPLY_EXCHANGE, "direct", durable=False)
            queue = pidbox.reply_queue_name(oid)
            channel.queue_declare(queue, exclusive=True, auto_delete=True,
                                  arguments=dict(pidbox.REPLY_QUEUE_ARGUMENTS))  # fmt: skip
            channel.queue_bind(queue, pidbox.REPLY_EXCHANGE, oid)

            def on_reply(_ch: Any, _method: Any, props: pika.BasicProperties, body: bytes) -> None:
                if (props.headers or {}).get("ticket") != message.ticket:
                    return
                try:
                    data = json.loads(body)
                except ValueError:
                    return
                if isinstance(data, dict):
                    replies.extend(pidbox.normalize(str(host), value) for host, value in data.items())

            channel.basic_consume(queue, on_reply, auto_ack=True)
        props = pika.BasicProperties(content_type="application/json", content_encoding="utf-8", delivery_mode=1,
                                     headers=pidbox.headers(timeout))  # fmt: skip
        channel.basic_publish(pidbox.EXCHANGE, "", json.dumps(message.body()).encode(), props)
        deadline = time.monotonic() + timeout
        limit = limit or (len(destination) if destination else None)
        while reply and (remaining := deadline - time.monotonic()) > 0:
            if limit is not None and len(replies) >= limit:
                break
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
    return broadcast(config, "revoke", {"task_id": task_id, "terminate": terminate, "signal": None}, timeout=timeout)


def rate_limit(config: Config, task: str, rate: str | None, *, timeout: float = 1.0) -> list[dict[str, Any]]:
    """Change *task*'s rate limit ("10/m") in every running worker; None goes back to the task's own."""
    return broadcast(config, "rate_limit", {"task_name": task, "rate_limit": rate}, timeout=timeout)
