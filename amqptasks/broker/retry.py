"""When to retry a publish after a lost connection, and how long to wait in between (pure: no I/O).

The options and their defaults are Celery's (``apply_async(retry=..., retry_policy={...})``): ``max_retries`` 3,
``interval_start`` 0 s, ``interval_step`` 0.2 s, ``interval_max`` 0.2 s, so a publisher waits 0, 0.2 and 0.2 s
before its three retries. ``max_retries=None`` retries forever.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from amqptasks import errors
from amqptasks.config.model import Broker

__all__ = ["NO_RETRY", "RetryPolicy", "from_options", "gave_up"]

_FIELDS = ("max_retries", "interval_start", "interval_step", "interval_max")


def gave_up(what: str, cause: str, retries: int, progress: str = "") -> errors.PublishConnectionError:
    """The error raised when the retry policy is exhausted."""
    plural = "retry" if retries == 1 else "retries"
    return errors.PublishConnectionError(
        f"cannot publish {what}: {cause}; gave up after {retries} {plural}{progress}. It may still have been delivered "
        "(publishing is at-least-once); the retry window is broker.publish_retry in the YAML"
    )


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry a publish whose connection failed.

    Only transport failures (broker unreachable, connection lost) are retried: an unroutable, nacked or
    refused message (missing exchange, no permission) would fail the same way again.
    """

    #: Retries after the first attempt; None retries forever, 0 never retries.
    max_retries: int | None = 3
    #: Seconds to wait before the first retry.
    interval_start: float = 0.0
    #: Seconds added to the wait for each further retry.
    interval_step: float = 0.2
    #: Longest wait between two retries, in seconds.
    interval_max: float = 0.2

    def __post_init__(self) -> None:
        if self.max_retries is not None and (not _is_int(self.max_retries) or self.max_retries < 0):
            raise ValueError(f"retry policy: max_retries must be an integer >= 0 or None, not {self.max_retries!r}")
        for name in _FIELDS[1:]:
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                raise ValueError(f"retry policy: {name} must be a number of seconds >= 0, not {value!r}")

    def intervals(self) -> Iterator[float]:
        """The sleep before each retry, in order; ends after ``max_retries`` values (never, for None).

        Wait *n* (from 0) is ``min(interval_start + n * interval_step, interval_max)``. (kombu's own loop lets
        the wait reach ``interval_max + interval_start``; we keep to the documented meaning, a maximum.)
        """
        retry = 0
        while self.max_retries is None or retry < self.max_retries:
            yield min(self.interval_start + retry * self.interval_step, self.interval_max)
            retry += 1

    def total_sleep(self) -> float:
        """Seconds spent sleeping when every retry fails (inf when retrying forever)."""
        if self.max_retries is None:
            return float("inf")
        return sum(self.intervals())


def configured(broker: Broker) -> RetryPolicy:
    """The YAML's ``broker.publish_retry`` (Celery's defaults where it is not set): every publisher's default."""
    given = broker.publish_retry
    if given is None:
        return RetryPolicy()
    return RetryPolicy(**{name: getattr(given, name) for name in _FIELDS})


def from_options(retry: bool = True, retry_policy: Mapping[str, Any] | None = None) -> RetryPolicy:
    """The policy for Celery-style ``retry=`` and ``retry_policy=`` options.

    ``retry=False`` means no retries, whatever the policy says. Keys missing from ``retry_policy`` keep
    their defaults; an unknown key is a ``ValueError`` naming it (a typo must not silently become a default).
    """
    if not isinstance(retry, bool):
        raise ValueError(f"retry must be True or False, not {retry!r}")
    options = dict(retry_policy or {})
    unknown = [key for key in options if key not in _FIELDS]
    if unknown:
        names = ", ".join(f"{key!r}{_hint(str(key))}" for key in unknown)
        raise ValueError(
            f"retry_policy: unknown key{'s' if len(unknown) > 1 else ''} {names} (known keys: {', '.join(_FIELDS)})"
        )
    policy = RetryPolicy(**options)
    return policy if retry else dataclasses.replace(policy, max_retries=0)


def _hint(key: str) -> str:
    close = difflib.get_close_matches(key, _FIELDS, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value  # NaN != NaN


#: Fail on the first transport error.
NO_RETRY = RetryPolicy(max_retries=0)
