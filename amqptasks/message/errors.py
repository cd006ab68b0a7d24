"""Why an incoming message cannot be turned into a task (pure)."""

from __future__ import annotations

from amqptasks.errors import AmqpTasksError


class MessageError(AmqpTasksError):
    """A message is malformed; *reason* is a short machine-readable tag for logs and dead letters."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class EncodeError(AmqpTasksError, TypeError):
    """A task's arguments cannot be sent (not serializable, or too large)."""
