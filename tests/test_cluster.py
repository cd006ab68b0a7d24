"""A 3-node cluster (tests/broker_cluster.py): failover URLs, quorum queues on every node, leader loss.

Real processes throughout: ``amqptasks topology apply`` and ``amqptasks worker`` subprocesses, and a publisher
process sending confirmed tasks; every task has an id, and the figures are exact: confirmed, run, lost, run twice.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from amqptasks.broker import BrokerURL
from tests.broker_cluster import Cluster, private_cluster
from tests.cli_helpers import run
from tests.worker_helpers import Project, WorkerProcess

pytestmark = pytest.mark.timeout(600)

QUEUE = "critical"
YAML = f"""
topology:
  queues:
    - name: {QUEUE}
      type: quorum
      dead_letter: auto
      arguments: {{x-quorum-initial-group-size: 3}}
routes:
  - {{task: "*", queue: {QUEUE}}}
"""

TASKS = """
@app.task(name="cluster.work", bind=True)
def work(self, n):
    record(id=self.request.id)
"""

#: Sends N tasks with ids task-00000..., each confirmed before the next, at most RATE a second (so that the kills
#: fall while tasks flow); a failed send is tried again (same id) until confirmed. Writes "id time" per confirmed
#: task, "time error" per failure.
PUBLISHER = """
import sys, time
from tasks import app
total, rate = int(sys.argv[1]), float(sys.argv[2])
start = time.time()
with open("confirmed.log", "a", buffering=1) as confirmed, open("errors.log", "a", buffering=1) as errors:
    for n in range(total):
        time.sleep(max(0.0, start + n / rate - time.time()))
        task_id = f"task-{n:05d}"
        while True:
            try:
                app.send_task("cluster.work", args=[n], task_id=task_id)
                break
            except Exception as exc:
                errors.write(f"{time.time()} {type(exc).__name__}: {exc}\\n")
                time.sleep(0.1)
        confirmed.write(f"{task_id} {time.time()}\\n")
app.close()
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    yield from private_cluster(3)


def confirmed(project: Project) -> list[tuple[str, float]]:
    path = project.path / "confirmed.log"
    if not path.exists():
        return []
    rows = [line.split() for line in path.read_text().splitlines()]
    return [(row[0], float(row[1])) for row in rows if len(row) == 2]


def wait_for(condition: object, timeout: float, what: str) -> float:
    """Poll until *condition()* is true; the time it became true."""
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.05)
    return time.time()


def stall(times: list[float], killed_at: float, window: float = 12.0) -> float:
    """The longest pause in *times* (sorted) during *window* s after a kill: how long until work went on."""
    after = [t for t in times if killed_at <= t <= killed_at + window]
    points = [killed_at, *after] if after else [killed_at, killed_at + window]
    return max(b - a for a, b in itertools.pairwise(points))


def test_apply_through_a_url_whose_first_node_is_down_declares_a_quorum_queue_on_all_three(
    tmp_path: Path, cluster: Cluster
) -> None:
    # Given the cluster's URL with a dead node first (nothing listens on port 1)
    url = BrokerURL.parse("amqp://guest:guest@127.0.0.1:1/%2F;" + cluster.url)
    project = Project.create(tmp_path, url, TASKS, YAML)

    # When the topology is applied once, for the whole cluster
    applied = run(["topology", "apply", "app.yaml"], cwd=tmp_path, env=project.env)

    # Then it went through a live node, and the quorum queue has a member on every node
    assert applied.code == 0, str(applied)
    assert cluster.members(QUEUE) == {node.name for node in cluster.nodes}
    again = run(["topology", "plan", "app.yaml", "--detailed-exitcode"], cwd=tmp_path, env=project.env)
    assert again.code == 0, str(again)


def test_killing_the_quorum_leader_three_times_loses_no_confirmed_task(tmp_path: Path, cluster: Cluster) -> None:
    total, kills, rate = 10_000, 3, 150.0
    project = Project.create(tmp_path, BrokerURL.parse(cluster.url), TASKS, YAML)
    applied = run(["topology", "apply", "app.yaml"], cwd=tmp_path, env=project.env)
    assert applied.code == 0, str(applied)
    (tmp_path / "publisher.py").write_text(PUBLISHER)

    # Given a worker and a publisher process, both given every node
    worker = WorkerProcess(project, "-Q", QUEUE)
    worker.wait_for_log("ready: consuming", timeout=30)
    env = {**os.environ, **project.env}
    publisher = subprocess.Popen([sys.executable, "publisher.py", str(total), str(rate)], cwd=tmp_path, env=env)
    kill_times: list[tuple[str, float]] = []
    try:
        # When the node holding the queue's leader is killed (SIGKILL) three times while tasks flow
        for k in range(kills):
            wait_for(lambda k=k: len(confirmed(project)) >= (k + 1) * total // (kills + 1), 300, "publishing")
            leader = cluster.leader(QUEUE)
            killed_at = time.time()
            leader.kill()
            # Then the publisher confirms again and the worker runs tasks again (measured below from their logs)
            wait_for(lambda t=killed_at: any(at > t for _, at in confirmed(project)), 60, "the publisher")
            wait_for(lambda t=killed_at: any(r["at"] > t for r in project.records()), 60, "the worker")
            kill_times.append((leader.name, killed_at))
            leader.start()  # back in the cluster before the next kill, so a majority stays
            cluster.await_nodes(3)
        assert publisher.wait(timeout=300) == 0
        sent = {task_id for task_id, _ in confirmed(project)}
        wait_for(lambda: sent <= {r["id"] for r in project.records()}, 120, "the worker to run every confirmed task")
    finally:
        if publisher.poll() is None:
            publisher.kill()
        worker.kill()

    published_at = sorted(at for _, at in confirmed(project))
    ran_at = sorted(r["at"] for r in project.records())
    recovery = [(name, stall(published_at, t), stall(ran_at, t)) for name, t in kill_times]
    runs = Counter(r["id"] for r in project.records())
    lost = sent - set(runs)
    duplicates = sum(n - 1 for n in runs.values())
    report = {
        "confirmed": len(sent),
        "ran": len(runs),
        "lost": len(lost),
        "ran twice or more": duplicates,
        "publish errors": len((tmp_path / "errors.log").read_text().splitlines()),
        "longest pause after each kill (node, publisher s, worker s)": [
            (n, round(p, 2), round(w, 2)) for n, p, w in recovery
        ],
    }
    print(f"\nleader kills: {json.dumps(report)}")
    assert len(sent) == total
    assert lost == set(), report
    assert set(runs) <= sent, report  # nothing ran that was never published
    assert duplicates <= kills * 200, report  # at most what was in flight (unacked, unconfirmed) per kill
    assert all(p <= 10 and w <= 10 for _, p, w in recovery), report
