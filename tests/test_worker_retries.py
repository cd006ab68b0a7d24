"""Retries on a real broker: autoretry up to max_retries then the DLQ, self.retry(countdown), the way back.

A retry is a fresh message (same task id, retries + 1) that waits in the broker-side delay tiers and then
returns to the exchange and routing key the task was first sent to.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from amqptasks.broker import BrokerURL
from amqptasks.constants import DELAY_TARGET_HEADER
from tests.worker_helpers import Project, death, get_all, make_app, ready, run_worker, worker_burst

pytestmark = pytest.mark.broker


def test_task_that_always_fails_runs_max_retries_plus_one_times_then_sits_in_the_dlq(
    tmp_path: Path, vhost: BrokerURL, channel: Any
) -> None:
    # Given a project whose task always fails, with autoretry_for and max_retries=3
    project = Project.create(tmp_path, vhost, """
        @app.task(name="billing.charge", bind=True, autoretry_for=(ValueError,), max_retries=3,
                  default_retry_delay=0.1)
        def charge(self, customer):
            record(id=self.request.id, retries=self.request.retries, header=self.request.headers.get("retries"))
            raise ValueError(f"card of {customer} declined")
    """)  # fmt: skip
    with project.app() as app:
        task_id = app.send_task("billing.charge", ["acme"]).id

    # When a burst worker drains the queue
    result = worker_burst(project, "-Q", "work")

    # Then the task ran 4 times (retries 0..3 in its request and its message headers), always as the same task id
    assert result.code == 0, str(result)
    calls = project.records()
    assert [c["retries"] for c in calls] == [0, 1, 2, 3]
    assert [c["header"] for c in calls] == [0, 1, 2, 3]
    assert {c["id"] for c in calls} == {task_id}
    # And the last attempt sits in the queue's DLQ, rejected, with the original routing key
    [(_, props, body)] = get_all(channel, "work.dlq")
    assert props.headers["id"] == props.correlation_id == task_id
    assert props.headers["retries"] == 3 and body[0] == ["acme"]
    dead = death(props)
    assert dead["reason"] == "rejected" and dead["queue"] == "work"
    assert list(dead["routing-keys"]) == ["work.run"]
    assert get_all(channel, "work") == []
    # And the log says what happened
    assert result.stderr.count("retried in 0.1 s") == 3
    assert "failed in" in result.stderr and "ValueError: card of acme declined; dead-lettered" in result.stderr


def test_self_retry_with_countdown_runs_again_no_earlier_and_request_describes_each_run(vhost: BrokerURL) -> None:
    # Given a bind=True task that retries itself once with a 0.6 s countdown
    app = make_app(vhost)
    seen: list[tuple[float, dict[str, Any]]] = []

    @app.task(name="reports.build", bind=True, max_retries=2)
    def build(self: Any, report: str, *, fmt: str) -> str:
        r = self.request
        seen.append((time.monotonic(), {
            "id": r.id, "args": r.args, "kwargs": dict(r.kwargs), "retries": r.retries, "hostname": r.hostname,
            "exchange": r.delivery_info["exchange"], "routing_key": r.delivery_info["routing_key"],
            "queue": r.delivery_info["queue"], "redelivered": r.redelivered, "root_id": r.root_id,
            "parent_id": r.parent_id, "tenant": r.headers.get("tenant"), "task": r.headers.get("task"),
        }))  # fmt: skip
        if r.retries == 0:
            self.retry(countdown=0.6)
        return f"{report}.{fmt}"

    sent = build.apply_async(("q3",), {"fmt": "pdf"}, headers={"tenant": "acme"}, parent_id="p-1", root_id="r-1")

    # When a worker runs until the retry has run
    run_worker(app, until=lambda: len(seen) == 2, hostname="worker-a@test")
    app.close()

    # Then the second run came no earlier than the countdown
    (first_at, first), (second_at, second) = seen
    assert second_at - first_at >= 0.6
    # And each run's request describes its message: same id, arguments, headers and lineage, retries counted
    common = {
        "id": sent.id, "args": ("q3",), "kwargs": {"fmt": "pdf"}, "hostname": "worker-a@test", "exchange": "tasks",
        "routing_key": "work.run", "queue": "work", "redelivered": False, "root_id": "r-1", "parent_id": "p-1",
        "tenant": "acme", "task": "reports.build",
    }  # fmt: skip
    assert first == {**common, "retries": 0}
    assert second == {**common, "retries": 1}


def test_retry_returns_to_the_same_exchange_and_routing_key_through_the_delay_tiers(
    vhost: BrokerURL, channel: Any
) -> None:
    # Given a task sent to the topic exchange with its own routing key, failing twice before it succeeds
    app = make_app(vhost)
    runs: list[dict[str, Any]] = []

    @app.task(name="invoices.send", bind=True, autoretry_for=(ConnectionError,), max_retries=5,
              default_retry_delay=0.1)  # fmt: skip
    def send(self: Any) -> None:
        info, headers = self.request.delivery_info, self.request.headers
        runs.append({"queue": info["queue"], "routing_key": info["routing_key"], "exchange": info["exchange"],
                     "target": headers.get(DELAY_TARGET_HEADER), "retries": self.request.retries})  # fmt: skip
        if len(runs) < 3:
            raise ConnectionError("smtp down")

    send.apply_async(exchange="tasks", routing_key="work.eu.invoice")

    # When a worker consumes both queues until the task succeeded
    run_worker(app, ["work", "other"], until=lambda: len(runs) == 3)
    app.close()

    # Then every run (the retries arrived from a delay tier) came through the same exchange and routing key
    assert [r["retries"] for r in runs] == [0, 1, 2]
    assert {(r["queue"], r["routing_key"], r["exchange"]) for r in runs} == {("work", "work.eu.invoice", "tasks")}
    assert [r["target"] for r in runs] == [None, "exchange:tasks", "exchange:tasks"]
    assert get_all(channel, "work.dlq") == [] and get_all(channel, "other") == []


def test_retry_max_retries_argument_overrides_the_task_option(vhost: BrokerURL, channel: Any) -> None:
    # Given a task declared with max_retries=1 that asks for up to 3 retries when it calls self.retry()
    app = make_app(vhost)
    retries: list[int] = []

    @app.task(name="sync.pull", bind=True, max_retries=1)
    def pull(self: Any) -> None:
        retries.append(self.request.retries)
        self.retry(exc=TimeoutError("upstream slow"), countdown=0.05, max_retries=3)

    pull.delay()

    # When a worker runs until the message is dead-lettered
    run_worker(app, until=lambda: len(retries) == 4 and ready(channel, "work.dlq") == 1)
    app.close()

    # Then self.retry's limit applied: 3 retries, then the task's exception dead-lettered it
    assert retries == [0, 1, 2, 3]
    [(_, props, _)] = get_all(channel, "work.dlq")
    assert props.headers["retries"] == 3


def test_expires_of_a_retried_task_is_kept(vhost: BrokerURL) -> None:
    # Given a task with an expiry that fails once
    app = make_app(vhost)
    expiries: list[datetime | None] = []

    @app.task(name="feeds.refresh", bind=True, autoretry_for=(OSError,), default_retry_delay=0.1)
    def refresh(self: Any) -> None:
        expiries.append(self.request.expires)
        if len(expiries) == 1:
            raise OSError("feed unreachable")

    refresh.apply_async(expires=60)

    # When it runs and is retried
    run_worker(app, until=lambda: len(expiries) == 2)
    app.close()

    # Then the retry carries the same expiry (it is not pushed back, nor lost)
    first, second = expiries
    assert first is not None and first == second and first > datetime.now(UTC)
