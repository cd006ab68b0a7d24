"""Task events: a worker started with events on publishes them; ``amqptasks events`` tails them."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from amqptasks.broker import BrokerURL
from amqptasks.constants import ENV_BROKER_URL, ENV_CONFIG
from amqptasks.monitor.events import EventFormatter
from tests.cli_helpers import console_script
from tests.test_control import project_yaml, running_worker
from tests.worker_helpers import make_app, ready, wait_until


def test_events_tail_shows_a_task_received_started_and_succeeded(vhost: BrokerURL, tmp_path: Path) -> None:
    # Given a worker publishing events, and 'amqptasks events --json --limit 3' following them
    app = make_app(vhost)

    @app.task(name="m.add")
    def add(x: int, y: int) -> int:
        return x + y

    config = project_yaml(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in (ENV_BROKER_URL, ENV_CONFIG)}
    env[ENV_BROKER_URL] = vhost.to_url()
    with running_worker(app, events=True, hostname="w1@test"):
        tail = subprocess.Popen([console_script(), "events", config, "--json", "--limit", "3"], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            assert tail.stderr is not None and "following task events" in tail.stderr.readline()
            # When a task runs
            result = add.delay(1, 2)
            out, err = tail.communicate(timeout=15)
        finally:
            tail.kill()
    # Then the tail printed one JSON line per event, in order, the success with its runtime
    assert tail.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    # in Celery's event format (celery/events): only task-received names the task
    assert [e["type"] for e in events] == ["task-received", "task-started", "task-succeeded"]
    assert {(e["uuid"], e["hostname"]) for e in events} == {(result.id, "w1@test")}
    assert (events[0]["name"], events[0]["args"], events[2]["result"]) == ("m.add", "(1, 2)", "3")
    assert events[2]["runtime"] >= 0
    formatter = EventFormatter()
    lines = [formatter(e) for e in events]
    assert "succeeded m.add[" in lines[2] and " ms" in lines[2]


def test_a_worker_without_events_publishes_none(vhost: BrokerURL, channel: Any) -> None:
    # Given a queue bound to every task event, and a worker with events off (the default)
    app = make_app(vhost)
    ran: list[bool] = []

    @app.task(name="m.noop")
    def noop() -> None:
        ran.append(True)

    channel.exchange_declare("celeryev", "topic", durable=True)
    channel.queue_declare("seen", durable=True)  # never transient: RabbitMQ 4.3 refuses it
    channel.queue_bind("seen", "celeryev", "#")
    # When a task runs
    with running_worker(app):
        noop.delay()
        wait_until(lambda: ran == [True], what="the task to run")
    # Then nothing was published
    assert ready(channel, "seen") == 0
