"""How fast tests run on memory://: publish N tasks, then drain them through the worker, in one process.

    .venv/bin/python bench/memory.py [N] [RUNS]

Prints a Markdown table (one row per run): publishing N tasks with delay(), draining them (the real worker code
path), and a retrying task's four runs through the delay tiers with the clock jumped over a 1-hour countdown.
No broker is needed. Numbers depend on the machine's load: note `uptime` with them.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import uuid
from typing import Any

from amqptasks import App
from amqptasks.errors import MaxRetriesExceeded
from amqptasks.testing import drain

YAML = """
topology:
  exchanges: [{name: tasks, type: direct}]
  queues:
    - name: work
      dead_letter: auto
      bindings: [{exchange: tasks, routing_key: work}]
delays: {enabled: true}
routes: [{task: "*", exchange: tasks, routing_key: work}]
"""


def one_run(n: int, directory: str) -> tuple[float, float, float]:
    path = os.path.join(directory, f"bench-{uuid.uuid4().hex[:6]}.yaml")
    with open(path, "w") as f:
        f.write(YAML)
    app = App.from_config(path, broker_url=f"memory://bench-{uuid.uuid4().hex[:8]}")

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(bind=True, max_retries=3)
    def flaky(self: Any) -> None:
        self.retry(countdown=3600)

    add.delay(0, 0)  # provisioning (32 delay tiers) is not what is measured
    drain(app)
    started = time.perf_counter()
    for i in range(n):
        add.delay(i, i)
    published = time.perf_counter()
    done = drain(app)
    drained = time.perf_counter()
    assert done.processed == n, done
    flaky.delay()
    retry_started = time.perf_counter()
    with contextlib.suppress(MaxRetriesExceeded):
        drain(app, advance_time=True)
    retried = time.perf_counter()
    os.unlink(path)
    return published - started, drained - published, retried - retry_started


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    directory = os.environ.get("TMPDIR", "/tmp")
    print(f"memory:// -- {n} tasks per run; load {os.getloadavg()[0]:.2f} at start\n")
    print("| run | publish (tasks/s) | drain (tasks/s) | 4 runs over 3 h of retries (ms) |")
    print("|---|---|---|---|")
    for run in range(1, runs + 1):
        publish_s, drain_s, retry_s = one_run(n, directory)
        print(f"| {run} | {n / publish_s:,.0f} | {n / drain_s:,.0f} | {retry_s * 1000:.0f} |")


if __name__ == "__main__":
    main()
