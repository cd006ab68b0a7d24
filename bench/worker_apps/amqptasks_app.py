"""amqptasks: ``amqptasks worker -A worker_apps.amqptasks_app:app -Q bench`` (run from bench/)."""

from __future__ import annotations

import os

from amqptasks import App
from amqptasks.config import load_config_text
from worker_apps.counter import tick

QUEUE = "bench"
TASK = "bench.noop"
#: The durable queue, declared on first use; delays on for the countdown rows (tiers live on the broker).
YAML = f"topology:\n  provision: true\n  queues:\n    - {{name: {QUEUE}}}\ndelays:\n  enabled: true\n"


def noop(x: int, y: int) -> None:
    tick()


def make(url: str) -> App:
    app = App(config=load_config_text(YAML, "bench-worker.yaml", broker_url=url), broker_url=url)
    app.task(name=TASK, queue=QUEUE)(noop)  # acks_late is the default: ack after the task returned
    return app


if os.environ.get("BENCH_BROKER_URL"):
    app = make(os.environ["BENCH_BROKER_URL"])
