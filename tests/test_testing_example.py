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


def test_the_plugin_builds_an_app_from_the_yaml_alone(tmp_path: Path) -> None:
    # amqptasks_config instead of amqptasks_app: each test gets an app of its own on a broker of its own.
    (tmp_path / "app.yaml").write_text((EXAMPLE / "app.yaml").read_text())
    (tmp_path / "pytest.ini").write_text("[pytest]\namqptasks_config = app.yaml\n")
    (tmp_path / "test_yaml_only.py").write_text(
        "def test_tasks_on_the_fixture_app(amqptasks_app, amqptasks_drain, amqptasks_messages):\n"
        "    @amqptasks_app.task\n"
        "    def double(x):\n"
        "        return 2 * x\n"
        "    result = double.delay(21)\n"
        "    assert [m.task for m in amqptasks_messages('invoices')] == [double.name]\n"
        "    amqptasks_drain()\n"
        "    assert result.get(timeout=1) == 42\n"
        "    assert amqptasks_app.config.broker.url.startswith('memory://test-')\n"
        "\n"
        "def test_the_next_test_starts_empty(amqptasks_app, amqptasks_messages):\n"
        "    assert amqptasks_messages('invoices') == []\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "AMQPTASKS_BROKER_URL"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "2 passed" in done.stdout
