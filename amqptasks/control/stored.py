"""Revocations stored on the broker: the ``amqptasks.revoked`` stream, written by ``revoke``, read by every worker.

A broadcast reaches only the workers running now. So ``revoke`` first appends ``{"task_id", "time"}`` to a
stream (persistent, confirmed), and each worker reads the stream from its first record when it starts, then keeps
reading: a worker started after a revoke (restart, scale-up, crash) still never runs that task.

RabbitMQ 3.10 quirk designed around: a declare that races another client's creation of the same stream answers
``declare-ok`` before the stream has a leader, and a publish right after it closes the whole *connection* (541
INTERNAL_ERROR, ``osiris_writer:write(none, ...)``, or 506 "Stream not found"). Fixed upstream in 4.0.x
(rabbitmq-server#12969). Hence: the writer retries on a fresh connection; the worker reads on a connection of its
own (never its control or publishing one) and publishes its catch-up marker only after its consumer is on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import uuid
from collections.abc import Callable
from typing import Any

import aio_pika
import aio_pika.abc
import pika
import pika.exceptions

from amqptasks import errors
from amqptasks.broker.aio import open_robust
from amqptasks.config.model import Config
from amqptasks.constants import REVOKED_STREAM, REVOKED_STREAM_ARGUMENTS
from amqptasks.topology.live import connect

log = logging.getLogger("amqptasks.worker")

#: Records a worker reads at a time (streams need a prefetch, and manual acks).
PREFETCH = 1000
#: Tries (with backoff from RETRY_DELAY s) before a revoke fails, or a worker starts without the stored ones.
ATTEMPTS = 5
RETRY_DELAY = 0.1
#: How long a starting worker waits to read back to its own marker.
CATCH_UP_TIMEOUT = 10.0


# --- the record (pure) ----------------------------------------------------------------------------------------


def encode(task_id: str, at: float) -> bytes:
    return json.dumps({"task_id": task_id, "time": at}).encode()


def decode(body: bytes) -> tuple[str, float] | str | None:
    """``(task_id, time)`` of a revocation, the id of a worker's catch-up marker, or None (not ours: skipped)."""
    try:
        record = json.loads(body)
        if "marker" in record:
            return str(record["marker"])
        at = float(record["time"])
        return (str(record["task_id"]), at) if math.isfinite(at) else None  # NaN would stall the expiry order
    except (ValueError, KeyError, TypeError):
        return None


# --- writing (revoke) -----------------------------------------------------------------------------------------


def store(config: Config, task_id: str) -> None:
    """Append the revocation of *task_id* to the stream, confirmed by the broker; declares the stream if needed."""
    body, failure = encode(task_id, time.time()), ""
    props = pika.BasicProperties(content_type="application/json", delivery_mode=2, correlation_id=task_id)
    for attempt in range(ATTEMPTS):
        if attempt:
            time.sleep(RETRY_DELAY * 2 ** (attempt - 1))
        connection = connect(config.broker, "revoke")
        try:
            channel = connection.channel()
            channel.queue_declare(REVOKED_STREAM, durable=True, arguments=dict(REVOKED_STREAM_ARGUMENTS))
            channel.confirm_delivery()
            channel.basic_publish("", REVOKED_STREAM, body, props, mandatory=True)
            return
        except pika.exceptions.AMQPError as exc:
            # A stream another client is creating right now (see the module docstring): a fresh connection, again.
            failure = f"{type(exc).__name__}: {exc}"
            log.debug("storing the revocation of %s failed (attempt %d): %s", task_id, attempt + 1, failure)
        finally:
            if connection.is_open:
                connection.close()
    raise errors.PublishError(
        f"could not store the revocation of task {task_id} in the {REVOKED_STREAM!r} stream after {ATTEMPTS} "
        f"tries ({failure}); nothing was revoked: try again, and check that the user may configure and write "
        f"{REVOKED_STREAM!r}"
    )


# --- reading (worker) -----------------------------------------------------------------------------------------


class StoredRevocations:
    """A worker's reader of the stream: every record of it, from the first, handed to *on_revoked*."""

    def __init__(self, config: Config, connection_name: str, on_revoked: Callable[[str, float], None]) -> None:
        self.config, self.connection_name, self.on_revoked = config, connection_name, on_revoked
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None
        self._marker = uuid.uuid4().hex
        self._caught_up = asyncio.Event()

    async def start(self) -> bool:
        """Read the stream up to now (through this worker's own marker record), then keep reading in the
        background. False (logged) if that failed: the worker then knows only what is broadcast from now on."""
        failure = ""
        for attempt in range(ATTEMPTS):
            if attempt:
                await asyncio.sleep(RETRY_DELAY * 2 ** (attempt - 1))
            try:
                await self._open()
                await asyncio.wait_for(self._caught_up.wait(), CATCH_UP_TIMEOUT)
                return True
            except Exception as exc:  # a stream being created by another client, a lost connection: again
                failure = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                log.debug("reading the stored revocations failed (attempt %d): %s", attempt + 1, failure)
                await self.stop()
        log.warning("could not read the stored revocations from %r (%s): this worker only learns revocations "
                    "broadcast from now on", REVOKED_STREAM, failure)  # fmt: skip
        return False

    async def stop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):  # the connection may be gone already
                await connection.close()

    async def _open(self) -> None:
        self._connection = connection = await open_robust(self.config.broker, self.connection_name)
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=PREFETCH)
        stream = await channel.declare_queue(REVOKED_STREAM, durable=True, arguments=dict(REVOKED_STREAM_ARGUMENTS))
        # After a reconnect the robust connection consumes again from the first record: a replay, harmless.
        await stream.consume(self._on_record, arguments={"x-stream-offset": "first"})
        # The consumer being on proves the stream has a running leader, so this publish cannot hit the 3.10 race.
        writer = await connection.channel(publisher_confirms=True, on_return_raises=True)
        marker = aio_pika.Message(json.dumps({"marker": self._marker}).encode(), content_type="application/json",
                                  delivery_mode=aio_pika.DeliveryMode.PERSISTENT)  # fmt: skip
        await writer.default_exchange.publish(marker, routing_key=REVOKED_STREAM)
        await writer.close()

    async def _on_record(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        record: Any = decode(message.body)
        if isinstance(record, tuple):
            self.on_revoked(*record)
        elif record == self._marker:
            self._caught_up.set()
        await message.ack()
