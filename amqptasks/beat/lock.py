"""One active beat per vhost, using RabbitMQ itself as the lock.

The leader is the connection that owns the exclusive queue ``amqptasks.beat.leader``. RabbitMQ lets only one
connection declare an exclusive queue (the others get RESOURCE_LOCKED, 405) and deletes it as soon as the
owner's connection closes: at once when the process dies (its socket closes), or after missed heartbeats when
the network fails. Standbys retry the declare every second, so a takeover after a crash takes about a second.
The lock connection uses short heartbeats and must be serviced (:meth:`BeatLock.wait`) while leading.
"""

from __future__ import annotations

import contextlib
import logging

import pika
import pika.exceptions

from amqptasks import errors
from amqptasks.broker.connection import connect
from amqptasks.config.model import Broker

#: The exclusive queue whose owner is the active beat of the vhost.
LOCK_QUEUE = "amqptasks.beat.leader"
#: Heartbeat of the lock connection: a partitioned leader's lock is freed after about two of these.
LOCK_HEARTBEAT = 5
_RESOURCE_LOCKED = 405

log = logging.getLogger("amqptasks.beat")


class _QuietStandby(logging.Filter):
    """pika warns about every channel the broker closes; a standby's refused declare is expected, once a second."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.WARNING and LOCK_QUEUE in record.getMessage())


logging.getLogger("pika.channel").addFilter(_QuietStandby())


class LockLost(errors.BrokerError):
    """The lock connection failed: this process is no longer (or never became) the leader."""


class BeatLock:
    def __init__(self, broker: Broker, *, name: str = "amqptasks beat") -> None:
        self._broker = broker
        self._name = name
        self._connection: pika.BlockingConnection | None = None
        self._channel: pika.adapters.blocking_connection.BlockingChannel | None = None
        self.held = False

    def try_acquire(self) -> bool:
        """Declare the exclusive queue; True if this connection owns it (now or already)."""
        if self.held:
            return True
        try:
            if self._connection is None or not self._connection.is_open:
                self._connection = connect(self._broker, self._name, heartbeat=LOCK_HEARTBEAT)
                self._channel = None
            if self._channel is None or not self._channel.is_open:
                self._channel = self._connection.channel()
            self._channel.queue_declare(LOCK_QUEUE, exclusive=True, durable=False, auto_delete=False)
        except pika.exceptions.ChannelClosedByBroker as exc:
            self._channel = None  # the broker closes the channel that failed to declare
            if exc.reply_code != _RESOURCE_LOCKED:
                raise LockLost(f"cannot declare the beat lock queue {LOCK_QUEUE!r}: {exc.reply_text}") from None
            return False
        except (pika.exceptions.AMQPError, OSError) as exc:
            self._drop()
            raise LockLost(f"beat lock connection failed: {exc!r}") from None
        self.held = True
        return True

    def wait(self, seconds: float) -> None:
        """Service the lock connection (heartbeats) for *seconds*; raises :class:`LockLost` if it failed."""
        if self._connection is None or not self._connection.is_open:
            self.held = False
            raise LockLost("the beat lock connection is closed")
        try:
            self._connection.process_data_events(time_limit=max(0.0, seconds))
        except (pika.exceptions.AMQPError, OSError) as exc:
            self._drop()
            raise LockLost(f"beat lock connection lost: {exc!r}") from None

    def release(self) -> None:
        """Close the lock connection; RabbitMQ deletes the queue, freeing the lock for a standby."""
        connection, self._connection = self._connection, None
        self._channel, self.held = None, False
        if connection is not None and connection.is_open:
            with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                connection.close()

    def _drop(self) -> None:
        self.held = False
        self._channel = None
        self._connection = None
