"""Run by tests/test_memory_offline.py in a network namespace with no network: prints what it observed as JSON."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from amqptasks import App, UnroutableError
from amqptasks.errors import MaxRetriesExceeded
from amqptasks.testing import drain, messages

app = App.from_config(Path(__file__).with_name("topology.yaml"))
runs: list[int] = []
later_runs: list[str] = []


@app.task(bind=True, max_retries=3)
def always_retries(self: Any) -> None:
    runs.append(self.request.retries)
    self.retry(countdown=0.2)


@app.task
def later(tag: str) -> None:
    later_runs.append(tag)


@app.task
def add(x: int, y: int) -> int:
    return x + y


def main() -> None:
    seen: dict[str, Any] = {"broker_url": os.environ.get("AMQPTASKS_BROKER_URL")}
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=1).close()
        seen["network"] = "reachable"
    except OSError as exc:
        seen["network"] = exc.strerror or str(exc)

    always_retries.delay()
    try:
        drain(app, advance_time=True)
    except MaxRetriesExceeded as exc:
        seen["drain_raised"] = type(exc).__name__
    seen["runs"] = runs
    seen["dlq"] = [
        {"task": m.task, "reason": m.death_reason, "x-death": [[d["queue"], d["reason"]] for d in m.headers["x-death"]]}
        for m in messages(app, "work.dlq")
    ]

    later.apply_async(("countdown",), countdown=60)
    drain(app)
    seen["countdown_after_drain"] = list(later_runs)
    drain(app, advance_time=True)
    seen["countdown_after_advance"] = list(later_runs)

    try:
        add.apply_async((1, 2), routing_key="nowhere")
        seen["unroutable"] = "published"
    except UnroutableError as exc:
        seen["unroutable"] = str(exc)

    seen["apply"] = add.apply((2, 3)).get()
    json.dump(seen, sys.stdout)


if __name__ == "__main__":
    main()
