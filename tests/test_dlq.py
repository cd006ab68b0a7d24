"""Dead letters on a real broker: failure records, ``amqptasks dlq list|show|replay|purge``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import pika
import pytest

from amqptasks.broker import BrokerURL
from amqptasks.constants import ENV_BROKER_URL, ENV_CONFIG
from tests.cli_helpers import console_script, run
from tests.worker_helpers import YAML, get_all, make_app, ready, run_worker

pytestmark = pytest.mark.broker


def _config(tmp_path: Path) -> str:
    path = tmp_path / "app.yaml"
    path.write_text(textwrap.dedent(YAML))
    return str(path)


def _dead_letters(channel: Any, count: int) -> None:
    """*count* messages sent to tasks/work.run, then rejected (no requeue) by a raw consumer: work.dlq."""
    channel.confirm_delivery()
    for i in range(count):
        props = pika.BasicProperties(correlation_id=f"m{i}", content_type="application/json", headers={"retries": 2})
        channel.basic_publish("tasks", "work.run", json.dumps([[i], {}, {}]).encode(), props)
    tags: list[int] = []
    channel.basic_qos(prefetch_count=count)
    consumer = channel.basic_consume("work", lambda ch, method, props, body: tags.append(method.delivery_tag))
    while len(tags) < count:
        channel.connection.process_data_events(time_limit=0.1)
    channel.basic_nack(tags[-1], multiple=True, requeue=False)
    channel.basic_cancel(consumer)
    while ready(channel, "work.dlq") < count:
        time.sleep(0.01)


def test_failed_task_is_listed_in_the_dlq_with_its_origin_and_last_error(
    tmp_path: Path, vhost: BrokerURL, channel: Any
) -> None:
    # Given a task that always fails, retried once
    app = make_app(vhost)

    @app.task(name="billing.charge", autoretry_for=(ValueError,), max_retries=1, default_retry_delay=0.05)
    def charge(customer: str) -> None:
        raise ValueError(f"card of {customer} declined")

    task_id = charge.delay("acme").id
    # When a worker ran it until it was dead-lettered
    run_worker(app, until=lambda: ready(channel, "work.dlq") == 1)

    # Then `dlq list` shows it: rejected, from tasks/work.run, once, with the error of the failure record
    config = _config(tmp_path)
    result = run(["dlq", "list", "work", config, "--broker", vhost.to_url(), "--json"], cwd=tmp_path)
    assert result.code == 0, str(result)
    [row] = result.json()
    assert row["task"] == "billing.charge" and row["id"] == task_id
    assert (row["reason"], row["exchange"], row["routing_key"], row["count"]) == ("rejected", "tasks", "work.run", 1)
    assert row["last_error"] == "ValueError: card of acme declined"
    table = run(["dlq", "list", "work", config, "--broker", vhost.to_url()], cwd=tmp_path)
    assert task_id in table.stdout and "ValueError: card of acme declined" in table.stdout
    # And `dlq show` gives the message in full, with its traceback excerpt
    shown = run(["dlq", "show", task_id, "work", config, "--broker", vhost.to_url()], cwd=tmp_path)
    assert shown.code == 0, str(shown)
    detail = shown.json()
    assert detail["body"]["args"] == ["acme"] and detail["headers"]["retries"] == 1
    assert detail["x-death"][0]["queue"] == "work"
    assert detail["failure_record"]["hostname"] and "raise ValueError" in detail["failure_record"]["traceback"]
    # And reading left the message in the DLQ
    assert ready(channel, "work.dlq") == 1


def test_replay_all_interrupted_half_way_then_run_again_restores_all_without_duplicates(
    tmp_path: Path, vhost: BrokerURL, channel: Any
) -> None:
    # Given 1,000 dead letters of the queue work
    make_app(vhost)
    _dead_letters(channel, 1000)
    env = {k: v for k, v in os.environ.items() if k not in (ENV_BROKER_URL, ENV_CONFIG)}
    args = [console_script(), "dlq", "replay", "work", _config(tmp_path), "--broker", vhost.to_url(), "--all", "--yes"]

    # When a replay is interrupted with SIGINT after about half of them
    process = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while process.poll() is None and ready(channel, "work.dlq") > 500:
        time.sleep(0.002)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=30)
    assert "Traceback" not in stderr
    assert process.returncode == 130, stderr
    replayed_first = ready(channel, "work")
    assert 0 < replayed_first < 1000
    assert replayed_first + ready(channel, "work.dlq") == 1000  # nothing lost, nothing twice
    assert f"replayed {replayed_first} message(s)" in stdout
    # And it is run again
    again = run(args[1:], cwd=tmp_path)

    # Then all 1,000 are back in their queue once each, and the DLQ is empty
    assert again.code == 0, str(again)
    assert ready(channel, "work.dlq") == 0
    messages = get_all(channel, "work")
    ids = {props.correlation_id for _, props, _ in messages}
    assert len(messages) == len(ids) == 1000
    _, props, body = messages[0]
    # a replayed task starts its retries again (dlq replay --keep-retries keeps the count)
    assert "x-death" not in props.headers and props.headers["retries"] == 0 and isinstance(body, list)
    print(f"replayed before SIGINT: {replayed_first}; after the rerun: {len(messages)}; duplicates: 0")


def test_replay_with_routing_key_override_sends_there(tmp_path: Path, vhost: BrokerURL, channel: Any) -> None:
    # Given 3 dead letters of work
    make_app(vhost)
    _dead_letters(channel, 3)
    # When one is replayed with the routing key of the queue other
    config = _config(tmp_path)
    result = run(["dlq", "replay", "work", config, "--broker", vhost.to_url(), "--id", "m1", "--routing-key",
                  "other.run", "--yes"], cwd=tmp_path)  # fmt: skip
    # Then it is in other, and the two others stay in the DLQ in order
    assert result.code == 0, str(result)
    assert [p.correlation_id for _, p, _ in get_all(channel, "other")] == ["m1"]
    assert [p.correlation_id for _, p, _ in get_all(channel, "work.dlq")] == ["m0", "m2"]


def test_unroutable_replay_stops_with_an_error_and_keeps_the_message(
    tmp_path: Path, vhost: BrokerURL, channel: Any
) -> None:
    make_app(vhost)
    _dead_letters(channel, 2)
    result = run(["dlq", "replay", "work.dlq", _config(tmp_path), "--broker", vhost.to_url(), "--all", "--yes",
                  "--routing-key", "nowhere"], cwd=tmp_path)  # fmt: skip
    assert result.code == 1 and "nowhere" in result.stderr, str(result)
    assert ready(channel, "work.dlq") == 2


def test_purge_with_yes_empties_the_dlq_and_says_how_many(tmp_path: Path, vhost: BrokerURL, channel: Any) -> None:
    make_app(vhost)
    _dead_letters(channel, 5)
    result = run(["dlq", "purge", "work", _config(tmp_path), "--broker", vhost.to_url(), "--yes"], cwd=tmp_path)
    assert result.code == 0, str(result)
    assert "purged 5 message(s) from work.dlq" in result.stdout
    assert ready(channel, "work.dlq") == 0


def test_list_of_a_missing_queue_is_a_clear_error(tmp_path: Path, vhost: BrokerURL) -> None:
    make_app(vhost)
    result = run(["dlq", "list", "nope", _config(tmp_path), "--broker", vhost.to_url()], cwd=tmp_path)
    assert result.code == 1
    assert "queue 'nope.dlq' does not exist" in result.stderr
