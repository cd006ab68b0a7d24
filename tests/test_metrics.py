"""Prometheus metrics of a worker, read the way Prometheus does: by scraping its HTTP endpoint."""

from __future__ import annotations

import urllib.request
from typing import Any

from amqptasks.broker import BrokerURL
from amqptasks.errors import Reject
from amqptasks.worker.consumer import Worker
from tests.test_control import running_worker
from tests.worker_helpers import make_app, wait_until


def scrape(worker: Worker) -> str:
    assert worker.control.metrics is not None
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.control.metrics.port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def test_metrics_endpoint_counts_tasks_by_state_runtime_retries_and_dead_letters(vhost: BrokerURL) -> None:
    # Given a worker serving metrics, and tasks that succeed, fail, retry once and are rejected
    app = make_app(vhost)
    calls: list[str] = []

    @app.task(name="m.ok")
    def ok() -> None:
        calls.append("ok")

    @app.task(name="m.boom")
    def boom() -> None:
        calls.append("boom")
        raise ValueError("boom")

    @app.task(name="m.flaky", autoretry_for=(KeyError,), max_retries=1, default_retry_delay=0)
    def flaky() -> None:
        calls.append("flaky")
        raise KeyError("again")

    @app.task(name="m.refuse")
    def refuse() -> None:
        calls.append("refuse")
        raise Reject("no thanks")

    with running_worker(app, metrics_port=0) as worker:
        # When they have run
        for _ in range(3):
            ok.delay()
        boom.delay()
        flaky.delay()
        refuse.delay()
        wait_until(lambda: len(calls) == 7, timeout=10, what="7 task runs")
        wait_until(lambda: not worker._inflight, what="every message to be settled")
        text = scrape(worker)
    # Then the endpoint shows what happened
    lines: dict[str, Any] = dict(line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    assert lines['amqptasks_tasks_total{state="succeeded",task="m.ok"}'] == "3.0"
    assert lines['amqptasks_tasks_total{state="failed",task="m.boom"}'] == "1.0"
    assert lines['amqptasks_tasks_total{state="retried",task="m.flaky"}'] == "1.0"
    assert lines['amqptasks_retries_total{task="m.flaky"}'] == "1.0"
    assert lines['amqptasks_dead_letters_total{reason="failed",task="m.boom"}'] == "1.0"
    assert lines['amqptasks_dead_letters_total{reason="failed",task="m.flaky"}'] == "1.0"
    assert lines['amqptasks_dead_letters_total{reason="rejected",task="m.refuse"}'] == "1.0"
    assert lines['amqptasks_task_runtime_seconds_count{task="m.ok"}'] == "3.0"
    assert lines["amqptasks_connection_up"] == "1.0"
    assert lines["amqptasks_prefetch_in_use"] == "0.0"
