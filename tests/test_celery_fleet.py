"""The mixed fleet: a Celery worker and our worker consuming one queue, 2,000 tasks from each kind of client;
every task runs exactly once (counted by id), and each kind of worker runs some of both clients' tasks."""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator
from typing import Any

import pytest

from amqptasks.broker import BrokerURL, ManagementClient, open_blocking
from amqptasks.tasks.signature import Signature
from tests import celery_interop_app
from tests.celery_peers import celery_worker, module_vhost, our_project, our_worker

pytestmark = pytest.mark.broker

PER_CLIENT = 2000
QUEUE = "fleet"
DRAIN_TIMEOUT = 180.0


@pytest.fixture
def fleet_vhost(broker: BrokerURL, mgmt: ManagementClient) -> Iterator[BrokerURL]:
    with module_vhost(broker, mgmt) as vhost:
        yield vhost


def test_a_mixed_fleet_runs_every_task_from_both_kinds_of_client_exactly_once(
    fleet_vhost: BrokerURL, tmp_path: Any
) -> None:
    project = our_project(tmp_path / "ours", fleet_vhost, None)
    with (
        our_worker(project, "-Q", QUEUE, "-n", "ours@fleet", "--processes", "2") as ours_worker,
        celery_worker(tmp_path / "celery", fleet_vhost, [QUEUE], hostname="celery@fleet") as theirs,
    ):  # fmt: skip
        # Given both workers on one queue, when each kind of client sends 2,000 tasks to it
        ours = project.app()
        ours_ids = [r.id for r in ours.publish_many(
            Signature("interop.record", ("ours", i), options={"queue": QUEUE}, app=ours) for i in range(PER_CLIENT)
        )]  # fmt: skip
        ours.close()
        client = celery_interop_app.make_app(fleet_vhost.to_url(), name="fleet-client")
        celery_ids = [client.send_task("interop.record", ("celery", i), queue=QUEUE).id for i in range(PER_CLIENT)]
        client.close()

        # Then, once the queue is drained, every id ran exactly once
        sent = set(ours_ids) | set(celery_ids)
        assert len(sent) == 2 * PER_CLIENT
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while True:
            runs = [("amqptasks", r["id"]) for r in project.records()] + [("celery", r["id"]) for r in theirs.runs()]
            if len({task_id for _, task_id in runs} & sent) == len(sent) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        _wait_idle(fleet_vhost)
        runs = [("amqptasks", r["id"]) for r in project.records()] + [("celery", r["id"]) for r in theirs.runs()]
        assert ours_worker.process.poll() is None and theirs.process is not None and theirs.process.poll() is None

    counts = collections.Counter(task_id for _, task_id in runs)
    lost = sent - set(counts)
    duplicated = {task_id for task_id, n in counts.items() if n > 1}
    by_worker = collections.Counter(
        (worker, "ours" if task_id in set(ours_ids) else "celery") for worker, task_id in runs
    )
    print(f"mixed fleet: {len(sent)} sent, {len(counts)} ran, lost {len(lost)}, duplicated {len(duplicated)}; "
          f"by (worker, client): {dict(by_worker)}")  # fmt: skip
    assert (len(lost), len(duplicated), set(counts) - sent) == (0, 0, set())
    assert all(by_worker[(worker, client)] > 0 for worker in ("amqptasks", "celery") for client in ("ours", "celery"))


def _wait_idle(vhost: BrokerURL) -> None:
    """The queue is empty and nothing is unacked (a late duplicate would still be counted)."""
    connection = open_blocking(vhost, connection_name="fleet drain check")
    try:
        channel = connection.channel()
        deadline = time.monotonic() + 30
        while channel.queue_declare(QUEUE, passive=True).method.message_count and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        connection.close()
