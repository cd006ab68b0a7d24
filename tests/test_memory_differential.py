"""memory:// against the real RabbitMQ: every scenario of tests/differential runs on both, in a vhost of its own
on the real broker and on a fresh in-memory broker with a virtual clock, and must observe the same queue contents,
headers, confirms and errors. A difference is a bug in memory://."""

from __future__ import annotations

from typing import Any

import pytest

from amqptasks.broker import ManagementClient
from amqptasks.broker.url import BrokerURL
from tests.differential.driver import MemoryDriver, RabbitDriver
from tests.differential.table import all_scenarios

SCENARIOS = all_scenarios()


def test_the_table_is_big_enough() -> None:
    assert len(SCENARIOS) >= 40, f"only {len(SCENARIOS)} scenarios"


@pytest.fixture(scope="module")
def rabbitmq_3(mgmt: ManagementClient) -> None:
    version = str(mgmt.overview().get("rabbitmq_version", ""))
    if not version.startswith("3."):
        # x-death ordering, quorum delivery limits and return order, the cycle rule changed in 3.13/4.x.
        pytest.skip(f"memory:// follows RabbitMQ 3.10's rules; this broker is {version} (no 4.x model yet)")


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_memory_broker_behaves_like_rabbitmq(name: str, vhost: BrokerURL, rabbitmq_3: None) -> None:
    scenario = SCENARIOS[name]
    real = RabbitDriver(vhost)
    try:
        expected: Any = scenario(real)
    finally:
        real.close()
    observed = scenario(MemoryDriver())
    assert observed == expected
