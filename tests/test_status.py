"""``amqptasks status``: rows built from management API JSON, and the command against a real broker.

Management stats lag the broker by up to ~5 s (the stats emission interval), so broker tests poll the command
until its counts settle instead of asserting on the first answer.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pika

from amqptasks.broker import BrokerURL
from amqptasks.monitor.status import FLAG_MISSING, FLAG_NO_CONSUMERS, build_snapshot
from tests.cli_helpers import Result, console_script, run, write

APP = """
topology:
  queues:
    - name: billing
      dead_letter: auto
    - name: emails
"""
# Declares one more queue than APP, never applied: the broker does not have it.
APP_WITH_INVOICES = APP + "    - name: invoices\n"
STATS_LAG = 15.0


def _queue(name: str, ready: int = 0, unacked: int = 0, consumers: int = 0, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "messages_ready": ready,
        "messages_unacknowledged": unacked,
        "consumers": consumers,
        **extra,
    }


# -- rows from JSON (no broker) ---------------------------------------------------------------------------------------
def test_a_queue_with_messages_and_no_consumers_is_flagged() -> None:
    snapshot = build_snapshot([_queue("billing", ready=3), _queue("emails", ready=2, consumers=1)])

    flags = {row.queue: row.flags for row in snapshot.rows}
    assert flags == {"billing": (FLAG_NO_CONSUMERS,), "emails": ()}


def test_an_empty_queue_without_consumers_is_not_flagged() -> None:
    (row,) = build_snapshot([_queue("idle")]).rows

    assert row.flags == ()


def test_a_declared_queue_absent_from_the_broker_is_missing() -> None:
    snapshot = build_snapshot([_queue("billing")], declared=["billing", "invoices"])

    assert [(row.queue, row.flags) for row in snapshot.rows] == [("billing", ()), ("invoices", (FLAG_MISSING,))]


def test_rates_come_from_message_stats_and_are_none_when_absent() -> None:
    stats = {"publish_details": {"rate": 4.5}, "deliver_get_details": {"rate": 2}}
    queues = [_queue("busy", message_stats=stats), _queue("quiet"), _queue("half", message_stats={"publish": 1})]

    rates = {row.queue: (row.publish_rate, row.deliver_rate) for row in build_snapshot(queues).rows}

    assert rates == {"busy": (4.5, 2.0), "quiet": (None, None), "half": (None, None)}


def test_the_dlq_of_a_queue_is_its_dot_dlq_queue() -> None:
    queues = [_queue("billing"), _queue("billing.dlq", ready=4), _queue("emails")]

    rows = {row.queue: (row.dlq, row.dlq_depth) for row in build_snapshot(queues, declared=["billing", "emails"]).rows}

    assert rows == {"billing": ("billing.dlq", 4), "emails": (None, None)}


def test_the_dlq_follows_the_dead_letter_exchange_binding_when_not_named_dot_dlq() -> None:
    arguments = {"x-dead-letter-exchange": "graveyard", "x-dead-letter-routing-key": "orders"}
    queues = [_queue("orders", arguments=arguments), _queue("dead-orders", ready=2)]
    bindings = [
        {"source": "graveyard", "destination": "dead-orders", "destination_type": "queue", "routing_key": "orders"}
    ]

    (row,) = build_snapshot(queues, bindings, declared=["orders"]).rows

    assert (row.dlq, row.dlq_depth) == ("dead-orders", 2)


def test_delay_tiers_are_hidden_unless_all_but_summed_with_the_unroutable_depth() -> None:
    queues = [_queue("billing"), _queue("amqptasks.delay.0", ready=2), _queue("amqptasks.delay.7", ready=3)]
    queues.append(_queue("amqptasks.unroutable", ready=1))

    declared = build_snapshot(queues, declared=["billing"])
    everything = build_snapshot(queues)

    assert [row.queue for row in declared.rows] == ["billing"]
    assert (declared.delayed, declared.unroutable) == (5, 1)
    assert "amqptasks.delay.7" in [row.queue for row in everything.rows]


# -- the command on a real broker -------------------------------------------------------------------------------------
def _status_until(check: Any, *args: str, cwd: Path) -> Result:
    deadline = time.monotonic() + STATS_LAG
    while True:
        result = run(["status", *args], cwd=cwd)
        if (result.code == 0 and check(result)) or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


def test_status_shows_depths_dlq_and_flags_of_declared_queues(
    tmp_path: Path, vhost: BrokerURL, channel: pika.adapters.blocking_connection.BlockingChannel
) -> None:
    # Given: billing (dead_letter: auto) holds 3 messages, one rejected into billing.dlq; nothing consumes
    write(tmp_path, "app.yaml", APP)
    write(tmp_path, "more.yaml", APP_WITH_INVOICES)
    assert run(["topology", "apply", "app.yaml", "--broker", vhost.to_url()], cwd=tmp_path).code == 0
    for n in range(3):
        channel.basic_publish("", "billing", f"task {n}".encode())
    method, _, _ = channel.basic_get("billing")
    assert method is not None
    channel.basic_reject(method.delivery_tag, requeue=False)

    # When: status reads the vhost (as JSON, until the stats database caught up)
    def settled(result: Result) -> bool:
        rows = {row["queue"]: row for row in result.json()}
        return bool(rows["billing"]["ready"] == 2 and rows["billing"]["dlq_depth"] == 1)

    result = _status_until(settled, "app.yaml", "--broker", vhost.to_url(), "--json", cwd=tmp_path)

    # Then: numbers are numbers, billing is flagged, emails is not
    assert result.code == 0, result
    rows = {row["queue"]: row for row in result.json()}
    assert list(rows) == ["billing", "emails"]
    assert rows["billing"]["ready"] == 2 and rows["billing"]["unacked"] == 0 and rows["billing"]["consumers"] == 0
    assert (rows["billing"]["dlq"], rows["billing"]["dlq_depth"]) == ("billing.dlq", 1)
    assert rows["billing"]["flags"] == [FLAG_NO_CONSUMERS]
    assert rows["emails"]["flags"] == [] and rows["emails"]["dlq"] is None

    # And: a queue declared in the YAML but never applied is MISSING; the table shows names and flags
    missing = run(["status", "more.yaml", "--broker", vhost.to_url(), "--json"], cwd=tmp_path)
    assert {row["queue"]: row["flags"] for row in missing.json()}["invoices"] == [FLAG_MISSING]
    table = run(["status", "more.yaml", "--broker", vhost.to_url()], cwd=tmp_path)
    assert table.code == 0, table
    assert table.stdout.startswith(f"broker {vhost.masked()}  vhost '{vhost.vhost}'")
    lines = {line.split()[0]: line for line in table.stdout.splitlines()[2:]}
    assert lines["billing"].endswith(FLAG_NO_CONSUMERS)
    assert lines["invoices"].endswith(FLAG_MISSING)
    assert "emails" in lines
    assert "\x1b[" not in table.stdout  # no colour when not on a terminal


def test_status_without_the_management_api_exits_1_and_says_how_to_enable_it(tmp_path: Path) -> None:
    write(tmp_path, "app.yaml", 'broker:\n  management_url: "http://127.0.0.1:9"\n' + APP.lstrip("\n"))

    result = run(["status", "app.yaml"], cwd=tmp_path)

    assert result.code == 1, result
    assert "connection refused" in result.stderr
    assert "rabbitmq-plugins enable rabbitmq_management" in result.stderr


def test_status_watch_refreshes_until_ctrl_c_and_exits_0(tmp_path: Path, vhost: BrokerURL) -> None:
    write(tmp_path, "app.yaml", APP)
    args = [console_script(), "status", "app.yaml", "--broker", vhost.to_url(), "--watch", "0.2"]
    process = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:  # Ctrl-C once the table was printed twice (refreshed), however slow the box
            lines.append(line)
            if sum("QUEUE" in x for x in lines) >= 2:
                break
        process.send_signal(signal.SIGINT)
        rest, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    stdout = "".join(lines) + rest

    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert stdout.count("QUEUE") >= 2  # refreshed, and printed in full each time
