"""memory:// against the real RabbitMQ: every scenario of tests/differential runs on both, in a vhost of its own
on the real broker and on a fresh in-memory broker with a virtual clock, and must observe the same queue contents,
headers, confirms and errors. A difference is a bug in memory://."""

from __future__ import annotations

from typing import Any

import pytest

from amqptasks.broker.url import BrokerURL
from tests.differential.driver import MemoryDriver, RabbitDriver
from tests.differential.table import all_scenarios

SCENARIOS = all_scenarios()


def test_the_table_is_big_enough() -> None:
    assert len(SCENARIOS) >= 40, f"only {len(SCENARIOS)} scenarios"


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_memory_broker_behaves_like_rabbitmq(name: str, vhost: BrokerURL) -> None:
    scenario = SCENARIOS[name]
    real = RabbitDriver(vhost)
    try:
        expected: Any = scenario(real)
    finally:
        real.close()
    observed = scenario(MemoryDriver())
    assert observed == expected
