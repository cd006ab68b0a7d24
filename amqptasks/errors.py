"""One exception hierarchy for everything amqptasks raises.

Transport errors (pika, aiormq, urllib) are wrapped at the boundary so users never have to catch a
transport library's exceptions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from amqptasks.result import AsyncResult


class AmqpTasksError(Exception):
    """Base class of every error amqptasks raises."""


class ConfigError(AmqpTasksError):
    """The YAML configuration is invalid; carries every diagnostic found."""

    def __init__(self, diagnostics: list[object]) -> None:
        self.diagnostics = diagnostics
        super().__init__("\n".join(str(d) for d in diagnostics))


class BrokerError(AmqpTasksError):
    """Talking to the broker failed."""


class ConnectionError(BrokerError):
    """The broker could not be reached or the connection was lost."""


class ManagementAPIError(BrokerError):
    """The RabbitMQ management HTTP API answered with an error or could not be reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class TopologyConflict(AmqpTasksError):
    """The live broker holds objects that differ incompatibly from the configuration."""


class PublishError(BrokerError):
    """A message could not be published, or the broker did not confirm that it took it."""


class UnroutableError(PublishError):
    """A mandatory publish was returned by the broker: no queue is bound for it."""

    def __init__(self, exchange: str, routing_key: str) -> None:
        self.exchange = exchange
        self.routing_key = routing_key
        shown = exchange or "(default exchange)"
        super().__init__(
            f"message to exchange {shown!r} with routing key {routing_key!r} is unroutable: "
            "no queue is bound for it (check the bindings in your topology YAML)"
        )


class UnroutableStep(UnroutableError):
    """A step of a workflow (chain, group, chord) that the topology cannot route: refused before anything of the
    workflow was published. ``workflow`` and ``step`` name them; ``reason`` says what is missing."""

    def __init__(self, workflow: str, step: str, exchange: str, routing_key: str, reason: str) -> None:
        self.workflow, self.step, self.reason = workflow, step, reason
        super().__init__(exchange, routing_key)
        self.args = (
            f"{workflow}: {step} cannot be routed: {reason}. Nothing of the workflow was published; declare it in "
            "the topology YAML (and run 'amqptasks topology apply'), or route the task elsewhere (routes:, "
            "@app.task(queue=...))",
        )

    def __str__(self) -> str:
        return str(self.args[0])


class BatchUnroutableError(UnroutableError):
    """``publish_many``: some messages were returned as unroutable; all the others were confirmed.

    ``exchange``/``routing_key``/``position`` name the first returned message, ``positions`` every one
    (0-based positions in the iterable given to ``publish_many``).
    """

    def __init__(
        self, exchange: str, routing_key: str, *, positions: tuple[int, ...], confirmed: int, total: int
    ) -> None:
        super().__init__(exchange, routing_key)
        self.position = positions[0]
        self.positions = positions
        self.confirmed = confirmed
        self.total = total
        shown = ", ".join(str(p) for p in positions[:10]) + (", ..." if len(positions) > 10 else "")
        self.args = (
            f"message #{self.position} of {total}: {self.args[0]}; {confirmed} of the {total} messages were "
            f"confirmed, {len(positions)} returned (positions {shown})",
        )


class BatchInterrupted(PublishError):
    """``publish_many`` stopped at item ``position``: taking it from the caller's iterable, or building its message
    (``publish_many(stream=True)``), raised the exception that is this error's ``__cause__``.

    The ``position`` items before it were sent and settled before this was raised: ``confirmed`` of them are on
    the broker, and ``failed`` is the error for the others (returned as unroutable, or nacked), or None. Nothing
    from ``position`` on was sent, so a batch can be resumed from there. ``results``: the ``AsyncResult`` of each
    item sent, in order (filled in by ``App.publish_many``; empty when publishing envelopes).
    """

    def __init__(self, position: int, *, confirmed: int, failed: PublishError | None, cause: BaseException) -> None:
        self.position = position
        self.confirmed = confirmed
        self.failed = failed
        self.results: list[AsyncResult] = []
        text = str(cause).rstrip(".")
        problem = f"{type(cause).__name__}: {text}" if text else type(cause).__name__
        if position == 0:
            sent = "nothing was sent"
        else:
            sent = f"the {position} before it were sent and {confirmed} of them confirmed"
            if failed is not None:
                sent += f" ({failed})"
        super().__init__(
            f"publish_many stopped at item #{position}: {problem}; {sent}; nothing from #{position} on was sent"
        )
        self.__cause__ = cause


class BatchPublishError(PublishError):
    """``with app.batch():`` ended with messages not confirmed: one error for the whole block.

    ``failed``: ``(position, result, reason)`` of each message known not to be stored, ``reason`` being
    "unroutable" (returned: no queue bound for it) or "nacked" (refused by the broker); every other message was
    confirmed, and ``results`` holds their results in order. When the publisher lost its connection for good or
    the broker closed its channel, which messages were stored is not known: ``unknown`` then holds the results
    of all of them (publishing them again may duplicate some). ``__cause__`` is the publisher's own error.
    """

    def __init__(
        self, *, failed: list[tuple[int, Any, str]], results: list[Any], unknown: list[Any], total: int,
        cause: BaseException,
    ) -> None:  # fmt: skip
        self.failed, self.results, self.unknown, self.total = failed, results, unknown, total
        if failed:
            shown = ", ".join(f"#{position} {reason}" for position, _, reason in failed[:10])
            more = ", ..." if len(failed) > 10 else ""
            text = (f"app.batch(): {len(failed)} of {total} messages were not stored ({shown}{more}); "
                    f"the other {len(results)} were confirmed: {cause}")  # fmt: skip
        else:
            text = (f"app.batch(): the fate of the {total} messages is not known (which were stored cannot be "
                    f"told; publishing them again may duplicate some): {cause}")  # fmt: skip
        super().__init__(text)
        self.__cause__ = cause


class PublishNacked(PublishError):
    """The broker refused responsibility for a message (basic.nack): a full queue with
    ``x-overflow: reject-publish``, or an internal error. The message was not stored; publishing it again is safe.

    ``positions``: which messages of a ``publish_many`` were refused (0-based); ``confirmed``: how many were taken.
    """

    def __init__(
        self, message: str, *, positions: tuple[int, ...] = (0,), confirmed: int = 0, returned: tuple[int, ...] = ()
    ) -> None:
        self.positions = positions
        self.confirmed = confirmed
        #: Positions of the batch that were returned as unroutable besides the nacked ones.
        self.returned = returned
        super().__init__(message)


class PublishTimeout(PublishError):
    """The broker did not confirm in time; usually it is blocking publishers because of a memory or disk alarm.

    Whether the broker got the message is unknown: publishing it again may create a duplicate.
    """


class PublishConnectionError(PublishError, ConnectionError):
    """Publishing gave up: the broker was unreachable, or the connection kept failing, through every retry.

    Publishing is at-least-once: when the connection failed after the message was sent but before the broker's
    confirm arrived, the message may still have been delivered (and a retry by the caller may deliver it twice).
    The retry window is ``broker.publish_retry`` in the YAML, or a call's ``retry_policy=``."""


# --- raised inside tasks, with Celery's meaning ------------------------------------------------------------


class TaskControl(AmqpTasksError):
    """Base of the exceptions a task raises to tell the worker what to do with its message."""


class Retry(TaskControl):
    """Run the task again later (raised by ``self.retry()``); the worker publishes the retry message."""

    def __init__(self, exc: BaseException | None = None, countdown: float | None = None) -> None:
        self.exc = exc
        self.countdown = countdown
        super().__init__(f"retry in {countdown:g} s" if countdown is not None else "retry", exc)


class Reject(TaskControl):
    """Reject the message: ``requeue=False`` dead-letters it, ``requeue=True`` puts it back in its queue."""

    def __init__(self, reason: str = "", requeue: bool = False) -> None:
        self.reason = reason
        self.requeue = requeue
        super().__init__(reason)


class Ignore(TaskControl):
    """Acknowledge the message and record nothing (the task handled it some other way)."""


class SoftTimeLimitExceeded(TaskControl):
    """Raised inside a task when its soft time limit passes; it may clean up and return."""

    def __init__(self, *args: object) -> None:  # raised in a thread as a bare type: it still says what happened
        super().__init__(*(args or ("soft time limit exceeded",)))


class TimeLimitExceeded(TaskControl):
    """The task ran past its hard time limit and was stopped; its message goes down the failure path."""


class Terminated(TaskControl):
    """Raised inside a sync task running in a thread when ``revoke(terminate=True)`` stops it (as Celery's)."""

    def __init__(self, *args: object) -> None:
        super().__init__(*(args or ("terminated by revoke(terminate=True)",)))


class ResultUnavailable(AmqpTasksError):
    """A result that can never arrive where it is awaited (rpc:// results go only to the publishing process)."""


class TaskRevoked(AmqpTasksError):
    """``AsyncResult.get()`` of a task that was revoked before it ran."""


class TaskExpired(TaskRevoked):
    """``AsyncResult.get()`` of a task whose ``expires`` passed before it ran (its state is REVOKED, as Celery's)."""


class MaxRetriesExceeded(TaskControl):
    """``self.retry()`` was called with no retries left."""
