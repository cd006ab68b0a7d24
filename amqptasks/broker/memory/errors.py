"""How the in-memory broker refuses something: as RabbitMQ does, by closing the channel with a code and text."""

from __future__ import annotations

from amqptasks.errors import BrokerError

__all__ = ["ACCESS_REFUSED", "NOT_FOUND", "PRECONDITION_FAILED", "ChannelClosed", "ChannelError"]

ACCESS_REFUSED = 403
NOT_FOUND = 404
PRECONDITION_FAILED = 406

_NAMES = {ACCESS_REFUSED: "ACCESS_REFUSED", NOT_FOUND: "NOT_FOUND", PRECONDITION_FAILED: "PRECONDITION_FAILED"}


class ChannelError(BrokerError):
    """The broker closed the channel: ``reply_code`` and ``reply_text`` are RabbitMQ's own (e.g. 406,
    ``PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'q' in vhost '/': ...``)."""

    def __init__(self, reply_code: int, detail: str) -> None:
        self.reply_code = reply_code
        self.reply_text = f"{_NAMES.get(reply_code, 'ERROR')} - {detail}"
        super().__init__(f"the broker closed the channel: {reply_code} {self.reply_text}")


class ChannelClosed(BrokerError):
    """The channel was closed (by an earlier error, or by its owner); open a new one."""
