"""Task options: which exist, their defaults, and how decorator, YAML and call-time values combine (pure).

Precedence, highest first: ``apply_async(...)`` arguments > YAML ``tasks:`` entries (exact name before
globs, then in file order) > ``@app.task(...)`` arguments > the defaults below. YAML beats code so that
operators can tune a deployed task without a release.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from amqptasks.config.diagnostics import did_you_mean
from amqptasks.message.serialize import Compression, Serializer

_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*([smh])\s*$")


@dataclass(frozen=True)
class TaskOptions:
    name: str
    queue: str | None = None
    exchange: str | None = None
    routing_key: str | None = None
    priority: int | None = None
    bind: bool = False
    max_retries: int | None = 3
    default_retry_delay: float = 180.0
    retry_backoff: bool | int = False
    retry_backoff_max: float = 600.0
    retry_jitter: bool = True
    autoretry_for: tuple[type[BaseException], ...] = ()
    acks_late: bool = True
    time_limit: float | None = None
    soft_time_limit: float | None = None
    rate_limit: str | None = None
    expires: float | None = None
    ignore_result: bool = False
    track_started: bool = False
    serializer: Serializer = "json"
    compression: Compression | None = None

    def merged(self, overrides: Mapping[str, Any]) -> TaskOptions:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


#: Options ``@app.task`` accepts: every TaskOptions field, plus ``base`` (a Task subclass).
DECLARATION_OPTIONS = frozenset({f.name for f in fields(TaskOptions)} | {"base"})


def check_declaration(options: Mapping[str, Any], where: str) -> None:
    """Unknown or malformed options fail when the task is declared, not when it first runs."""
    for key in options:
        if key not in DECLARATION_OPTIONS:
            hint = did_you_mean(key, DECLARATION_OPTIONS)
            raise TypeError(f"{where}: unknown task option {key!r}{hint}")
    if options.get("rate_limit") is not None:
        parse_rate(str(options["rate_limit"]), where)
    for key in ("time_limit", "soft_time_limit", "expires"):
        value = options.get(key)
        if value is not None and (not isinstance(value, int | float) or value <= 0):
            raise TypeError(f"{where}: {key} must be a positive number of seconds, got {value!r}")
    retry_on = options.get("autoretry_for", ())
    if not all(isinstance(e, type) and issubclass(e, BaseException) for e in retry_on):
        raise TypeError(f"{where}: autoretry_for must be a tuple of exception classes")


def parse_rate(text: str, where: str = "rate_limit") -> float:
    """``"10/s"`` → 10.0 tasks per second; ``"100/m"``, ``"1000/h"`` likewise."""
    match = _RATE_RE.match(text)
    if not match:
        raise ValueError(f"{where}: rate_limit {text!r} must look like '10/s', '100/m' or '1000/h'")
    per = {"s": 1.0, "m": 60.0, "h": 3600.0}[match.group(2)]
    return float(match.group(1)) / per


def matching_overrides(name: str, entries: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """YAML ``tasks:`` entries for *name*: globs in file order, then the exact name on top."""
    merged: dict[str, Any] = {}
    for pattern, values in entries.items():
        if pattern != name and fnmatch.fnmatchcase(name, pattern):
            merged.update(values)
    merged.update(entries.get(name, {}))
    return merged


def names_matching(pattern: str, names: Iterable[str]) -> list[str]:
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)]
