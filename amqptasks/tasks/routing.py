"""Which exchange, routing key, queue and priority a task is published with (pure).

Precedence, highest first: ``apply_async(exchange=, routing_key=, queue=, priority=)`` > YAML ``routes``
(first matching route, in file order) > ``@app.task(queue=, exchange=, routing_key=, priority=)`` >
the default: queue ``default`` through the default exchange. ``queue=`` means "publish through the
default exchange with the queue's name as routing key", as in Celery.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from amqptasks.config.tasks_model import Route

DEFAULT_QUEUE = "default"


@dataclass(frozen=True)
class Destination:
    exchange: str
    routing_key: str
    #: Set when the destination is a queue reached through the default exchange.
    queue: str | None = None
    priority: int | None = None


@dataclass(frozen=True)
class RouteFields:
    """The routing fields one layer (call, YAML route, decorator) sets; None = not set by it."""

    exchange: str | None = None
    routing_key: str | None = None
    queue: str | None = None
    priority: int | None = None


@lru_cache(maxsize=256)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def route_matches(route: Route, name: str) -> bool:
    if route.regex is not None:
        return _regex(route.regex).fullmatch(name) is not None
    return route.task is not None and fnmatch.fnmatchcase(name, route.task)


def find_route(routes: Sequence[Route], name: str) -> RouteFields:
    for route in routes:
        if route_matches(route, name):
            return RouteFields(route.exchange, route.routing_key, route.queue, route.priority)
    return RouteFields()


def resolve(name: str, call: RouteFields, yaml_route: RouteFields, declared: RouteFields) -> Destination:
    """Combine the layers. The highest layer that names a queue or an exchange decides the destination;
    a routing key from a higher layer still applies to an exchange named by a lower one."""
    layers = (call, yaml_route, declared)
    priority = next((layer.priority for layer in layers if layer.priority is not None), None)
    for i, layer in enumerate(layers):
        if layer.queue is not None and layer.exchange is None:
            return Destination("", layer.queue, layer.queue, priority)
        if layer.exchange is not None:
            keys = [h.routing_key for h in layers[: i + 1] if h.routing_key is not None]
            return Destination(layer.exchange, keys[0] if keys else name, None, priority)
    # Only routing keys were given (or nothing): a queue of that name through the default exchange.
    key = next((layer.routing_key for layer in layers if layer.routing_key is not None), DEFAULT_QUEUE)
    return Destination("", key, key, priority)
