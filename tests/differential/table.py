"""The registry of differential scenarios: ``@scenario`` adds a function ``(driver) -> observation``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.differential.driver import Driver

Scenario = Callable[[Driver], Any]
SCENARIOS: dict[str, Scenario] = {}


def scenario(fn: Scenario) -> Scenario:
    name = fn.__name__
    assert name not in SCENARIOS, f"scenario {name} defined twice"
    SCENARIOS[name] = fn
    return fn


def all_scenarios() -> dict[str, Scenario]:
    from tests.differential import (  # noqa: F401  (each module registers its scenarios)
        amqptasks_flows,
        consuming,
        declaring,
        limits,
        routing,
        ttl_deadletter,
    )

    return SCENARIOS
