"""The worked example of docs/testing.md (examples/testing) passes as a user runs it: pytest in that directory,
through the installed amqptasks plugin -- on memory://, and the marked test on a real RabbitMQ vhost too."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from amqptasks.broker.url import BrokerURL

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "testing"


def test_the_testing_example_passes_on_memory_and_on_rabbitmq(broker: BrokerURL) -> None:
    env = {k: v for k, v in os.environ.items() if k != "AMQPTASKS_BROKER_URL"}
    env["AMQPTASKS_TEST_RABBITMQ_URL"] = broker.with_vhost("/").to_url()
    done = subprocess.run([sys.executable, "-m", "pytest", "-v", "-rs", "-p", "no:cacheprovider"], cwd=EXAMPLE,
                          env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    outcomes = dict(re.findall(r"^test_billing\.py::(\S+) (PASSED|FAILED|SKIPPED)", done.stdout, re.MULTILINE))
    assert outcomes == {
        "test_total_runs_eagerly": "PASSED",
        "test_charge_through_the_worker": "PASSED",
        "test_failed_charge_ends_in_the_dead_letter_queue": "PASSED",
        "test_a_reminder_waits_for_its_countdown": "PASSED",
        "test_an_unknown_routing_key_is_refused": "PASSED",
        "test_charge_on_both_brokers[memory]": "PASSED",
        "test_charge_on_both_brokers[rabbitmq]": "PASSED",
    }


def test_the_docs_page_shows_the_example_files() -> None:
    page = (ROOT / "docs" / "testing.md").read_text()
    for name in ("app.yaml", "billing.py", "test_billing.py", "pytest.ini"):
        assert f'--8<-- "examples/testing/{name}"' in page, name
