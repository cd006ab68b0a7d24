"""Checks for the ``routes`` and ``tasks`` sections (pure)."""

from __future__ import annotations

import re

from amqptasks.config.diagnostics import Diagnostics, did_you_mean
from amqptasks.config.model import Config
from amqptasks.config.rules import BUILTIN_EXCHANGES
from amqptasks.config.tasks_model import Route, TaskSettings
from amqptasks.tasks.options import parse_rate


def check(config: Config, diags: Diagnostics) -> None:
    exchanges = {*BUILTIN_EXCHANGES, "", *(e.name for e in config.topology.exchanges)}
    queues = {q.name for q in config.topology.queues}
    for route in config.routes:
        _route(route, exchanges, queues, diags)
    for pattern, settings in config.tasks.items():
        _settings(pattern, settings, diags)
    from amqptasks.beat import schedule  # imported here: the beat package imports the config model

    schedule.check(config.beat, diags)


def _route(route: Route, exchanges: set[str], queues: set[str], diags: Diagnostics) -> None:
    what = f"route {route.task or route.regex!r}"
    if (route.task is None) == (route.regex is None):
        diags.error(route.loc, "route: give exactly one of 'task' (a name or glob) and 'regex'")
        return
    if route.regex is not None:
        try:
            re.compile(route.regex)
        except re.error as exc:
            diags.error(route.where("regex"), f"{what}: invalid regular expression: {exc}")
    if all(v is None for v in (route.exchange, route.routing_key, route.queue, route.priority)):
        diags.error(route.loc, f"{what}: says nothing; give exchange, routing_key, queue or priority")
    if route.exchange is not None and route.exchange not in exchanges:
        hint = did_you_mean(route.exchange, exchanges)
        diags.error(route.where("exchange"), f"{what}: exchange {route.exchange!r} is not declared{hint}")
    if route.queue is not None and route.exchange is not None:
        diags.error(route.where("queue"), f"{what}: queue means 'through the default exchange'; drop exchange or queue")
    if route.queue is not None and route.queue not in queues:
        hint = did_you_mean(route.queue, queues)
        diags.warning(route.where("queue"), f"{what}: queue {route.queue!r} is not declared in the topology{hint}")


def _settings(pattern: str, settings: TaskSettings, diags: Diagnostics) -> None:
    what = f"tasks {pattern!r}"
    if settings.rate_limit is not None:
        try:
            parse_rate(settings.rate_limit)
        except ValueError as exc:
            diags.error(settings.where("rate_limit"), f"{what}: {exc}")
    for name in ("time_limit", "soft_time_limit", "expires", "default_retry_delay", "retry_backoff_max"):
        value = getattr(settings, name)
        if value is not None and value <= 0:
            diags.error(settings.where(name), f"{what}: {name} must be a positive number of seconds")
    if settings.max_retries is not None and settings.max_retries < 0:
        diags.error(settings.where("max_retries"), f"{what}: max_retries must be 0 or more")
    hard, soft = settings.time_limit, settings.soft_time_limit
    if hard is not None and soft is not None and soft >= hard:
        diags.warning(
            settings.where("soft_time_limit"), f"{what}: soft_time_limit {soft} is not below time_limit {hard}"
        )
