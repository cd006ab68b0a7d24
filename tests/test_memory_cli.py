"""The CLI with a memory:// broker URL, as a user runs it: what works in one process works (plan, apply,
validate), and what needs other processes says so and what to do instead -- never a traceback."""

from __future__ import annotations

from pathlib import Path

from tests.cli_helpers import run, write

YAML = """
topology:
  exchanges:
    - {name: tasks, type: direct}
  queues:
    - name: work
      dead_letter: auto
      bindings: [{exchange: tasks, routing_key: work}]
"""

APP = """
from amqptasks import App
app = App.from_config("app.yaml")
"""


def test_plan_and_apply_run_against_the_in_process_broker(tmp_path: Path) -> None:
    write(tmp_path, "app.yaml", YAML)
    config = "app.yaml"
    plan = run(["topology", "plan", config], cwd=tmp_path, env={"AMQPTASKS_BROKER_URL": "memory://"})
    assert plan.code == 0, plan
    assert plan.stdout.strip().endswith("6 to create")  # tasks, amqptasks.dlx, work, work.dlq, 2 bindings
    applied = run(["topology", "apply", config], cwd=tmp_path, env={"AMQPTASKS_BROKER_URL": "memory://"})
    assert applied.code == 0, applied
    assert "applied to memory://: 6 created" in applied.stdout


def test_commands_that_need_other_processes_refuse_memory_and_say_why(tmp_path: Path) -> None:
    write(tmp_path, "app.yaml", YAML)
    config = "app.yaml"
    write(tmp_path, "app.py", APP)
    env = {"AMQPTASKS_BROKER_URL": "memory://"}
    worker = run(["worker", "-A", "app:app", "-Q", "work"], cwd=tmp_path, env=env)
    assert worker.code != 0
    assert "lives inside one process: a worker process cannot reach the one your app publishes to" in worker.stderr
    status = run(["status", config], cwd=tmp_path, env=env)
    assert status.code != 0 and "memory:// (a broker inside one process) does not have" in status.stderr
    ping = run(["inspect", "ping", config], cwd=tmp_path, env=env)
    assert ping.code != 0 and "memory:// has no basic_consume()" in ping.stderr
    for result in (worker, status, ping):
        assert "Traceback" not in result.stderr, result
