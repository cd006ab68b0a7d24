"""When the worker acknowledges: early messages go back to the broker, Reject/Ignore, acks_late=False.

The worker never holds a message it is not running: RabbitMQ's consumer_timeout could not fire, and a
restart loses nothing.
"""

from __future__ import annotations

import logging
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from amqptasks.broker import BrokerURL, ManagementClient
from amqptasks.errors import Ignore, Reject
from tests.worker_helpers import (
    acks,
    celery_headers,
    death,
    get_all,
    make_app,
    publish_raw,
    queue_stats_when,
    ready,
    run_worker,
    wait_until,
)

pytestmark = pytest.mark.broker


def logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return any(text in record.getMessage() for record in caplog.records)


def test_message_before_its_eta_goes_back_through_the_delays_and_runs_after_its_eta(
    vhost: BrokerURL, channel: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a message published as a Celery client does: an eta header 1.5 s ahead, no delay tiers
    caplog.set_level(logging.INFO, logger="amqptasks")
    app = make_app(vhost)
    ran_at: list[datetime] = []

    @app.task(name="mail.digest")
    def digest(user: str) -> None:
        ran_at.append(datetime.now(UTC))

    eta = datetime.now(UTC) + timedelta(seconds=1.5)
    task_id = str(uuid.uuid4())
    publish_raw(channel, "work.run", '[["ann"], {}, {}]', exchange="tasks",
                headers=celery_headers("mail.digest", task_id, eta=eta.isoformat()))  # fmt: skip

    # When a worker takes it, and is stopped once it has sent it back to the broker
    run_worker(app, until=lambda: logged(caplog, "before its eta: sent back through the delay tiers"))

    # Then it did not run, and the worker held nothing: stopping it returned no message to the queue
    assert ran_at == [] and datetime.now(UTC) < eta
    assert ready(channel, "work") == 0

    # When a worker runs again
    run_worker(app, until=lambda: bool(ran_at))
    app.close()

    # Then the task ran once, no earlier than its eta
    assert len(ran_at) == 1 and ran_at[0] >= eta
    assert get_all(channel, "work.dlq") == []


def test_reject_dead_letters_reject_with_requeue_runs_again_and_ignore_acks(
    vhost: BrokerURL, channel: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Given three tasks: one rejects its message, one rejects it with requeue once, one ignores it
    caplog.set_level(logging.INFO, logger="amqptasks")
    app = make_app(vhost)
    calls: list[str] = []

    @app.task(name="ctl.reject")
    def reject() -> None:
        calls.append("reject")
        raise Reject("invoice already paid", requeue=False)

    @app.task(name="ctl.requeue", bind=True)
    def requeue(self: Any) -> None:
        calls.append(f"requeue redelivered={self.request.redelivered}")
        if calls.count("requeue redelivered=False") + calls.count("requeue redelivered=True") == 1:
            raise Reject("not now", requeue=True)

    @app.task(name="ctl.ignore")
    def ignore() -> None:
        calls.append("ignore")
        raise Ignore()

    rejected, requeued = reject.delay(), requeue.delay()
    ignore.delay()

    # When a burst worker drains the queue
    run_worker(app, concurrency=1)
    app.close()

    # Then the rejected one is in the DLQ, the requeued one ran a second time, the ignored one is gone
    # (requeued by the broker, so its second delivery is flagged redelivered, as RabbitMQ does; it is not charged
    # as a crash: no worker died running it)
    assert sorted(calls) == ["ignore", "reject", "requeue redelivered=False", "requeue redelivered=True"]
    [(_, props, _)] = get_all(channel, "work.dlq")
    assert props.correlation_id == rejected.id and death(props)["reason"] == "rejected"
    assert ready(channel, "work") == 0
    # And the log tells them apart
    assert logged(caplog, f"ctl.reject[{rejected.id}] rejected to the DLQ: invoice already paid")
    assert logged(caplog, f"ctl.requeue[{requeued.id}] requeued: not now")
    assert not logged(caplog, f"ctl.requeue[{requeued.id}] rejected to the DLQ")


def test_acks_late_false_acknowledges_before_the_task_runs(
    vhost: BrokerURL, channel: Any, mgmt: ManagementClient
) -> None:
    # Given a slow task with acks_late=False and the same slow task with the default acks_late=True
    app = make_app(vhost)
    release = threading.Event()
    started: list[str] = []

    def slow(name: str) -> None:
        started.append(name)
        release.wait(30)

    app.task(name="early.ack", acks_late=False)(lambda: slow("early"))
    app.task(name="other.late")(lambda: slow("late"))
    app.send_task("early.ack")
    app.send_task("other.late")
    seen: dict[str, Any] = {}

    def observe() -> None:
        # In a thread of its own: the worker's loop (which runs until()) must stay free to send the ack.
        try:
            wait_until(lambda: len(started) == 2, timeout=20, what="both tasks to start")
            seen["work"] = queue_stats_when(mgmt, vhost, "work", lambda q: acks(q) >= 1 and "messages" in q)
            seen["other"] = queue_stats_when(mgmt, vhost, "other", lambda q: q.get("messages_unacknowledged") == 1)
            seen["running"] = not release.is_set()
        except AssertionError as exc:
            seen["error"] = exc
        finally:
            release.set()

    observer = threading.Thread(target=observe, daemon=True)
    observer.start()

    # When a worker runs them, and the broker's statistics are read while both still run
    run_worker(app, ["work", "other"], until=lambda: not observer.is_alive(), timeout=45)
    app.close()

    # Then the acks_late=False message was acknowledged while its task was still running
    assert "error" not in seen, seen.get("error")
    assert seen["running"]
    assert seen["work"]["messages_unacknowledged"] == 0 and seen["work"]["messages"] == 0
    # And the acks_late=True one was held unacknowledged until its task returned
    assert acks(seen["other"]) == 0
    assert ready(channel, "work") == ready(channel, "other") == 0
