"""What happened to the messages of one publish call, and the error that reports it (pure: no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field

from amqptasks import errors
from amqptasks.message.envelope import Envelope

__all__ = ["BLOCKED_HINT", "Outcome"]

#: Why confirms stop coming: RabbitMQ blocks publishing connections while a resource alarm is on.
BLOCKED_HINT = (
    "the broker is blocking publishers, probably because of a memory or disk alarm "
    "(check `rabbitmqctl status` or the management UI overview)"
)

_NACK_HINT = "a full queue with x-overflow=reject-publish, or a broker internal error; the message was not stored"


@dataclass
class Outcome:
    """Accounting for one ``publish``/``publish_many`` call; survives reconnects within the call."""

    #: Whether the call published a batch (errors then name positions and counts).
    batch: bool = False
    #: Messages taken from the caller so far.
    taken: int = 0
    #: Messages the broker confirmed and routed.
    confirmed: int = 0
    #: (position, envelope) of messages the broker returned as unroutable, in publish order.
    returned: list[tuple[int, Envelope]] = field(default_factory=list)
    #: (position, envelope) of messages the broker nacked.
    nacked: list[tuple[int, Envelope]] = field(default_factory=list)
    #: (exchange, routing key) of returns that matched no message in flight (should not happen; still a failure).
    stray_returns: list[tuple[str, str]] = field(default_factory=list)

    #: (position, exception) when taking an item from the caller's iterable raised: the batch stopped there.
    interrupted: tuple[int, Exception] | None = None

    def error(self) -> errors.PublishError | None:
        """The error to raise for the failures recorded, or None when every message was confirmed."""
        failed = self._failed()
        if self.interrupted is None:
            return failed
        position, cause = self.interrupted
        return errors.BatchInterrupted(position, confirmed=self.confirmed, failed=failed, cause=cause)

    def _failed(self) -> errors.PublishError | None:
        if self.nacked:
            return self._nacked_error()
        if self.returned:
            if not self.batch:
                envelope = self.returned[0][1]
                return errors.UnroutableError(envelope.exchange, envelope.routing_key)
            first = self.returned[0][1]
            return errors.BatchUnroutableError(
                first.exchange,
                first.routing_key,
                positions=tuple(sorted(position for position, _ in self.returned)),
                confirmed=self.confirmed,
                total=self.taken,
            )
        if self.stray_returns:
            return errors.UnroutableError(*self.stray_returns[0])
        return None

    def progress(self) -> str:
        """For errors that end a batch early: how far it got (empty for a single publish)."""
        if not self.batch:
            return ""
        return f"; {self.confirmed} of the {self.taken} messages sent so far were confirmed"

    def _nacked_error(self) -> errors.PublishNacked:
        positions = tuple(sorted(position for position, _ in self.nacked))
        first_position, first = min(self.nacked, key=lambda item: item[0])
        if not self.batch:
            return errors.PublishNacked(f"the broker refused {first.describe()} (basic.nack: {_NACK_HINT})")
        also = f", and returned {len(self.returned)} as unroutable" if self.returned else ""
        return errors.PublishNacked(
            f"the broker refused {len(positions)} of {self.taken} messages (basic.nack: {_NACK_HINT}){also}; "
            f"the first is #{first_position}, {first.describe()}; {self.confirmed} were confirmed",
            positions=positions,
            confirmed=self.confirmed,
            returned=tuple(sorted(position for position, _ in self.returned)),
        )
