"""Snags a new user meets in the first hour, each through the real ``amqptasks`` command.

Wrong broker port, a wrong ``-A``, a queue that does not exist, a replay without a terminal, a replayed task that
went straight back to its DLQ, delay-tier noise in ``dlq show``, and PyYAML's parser jargon.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from amqptasks.broker import BrokerURL
from tests.cli_helpers import run, write
from tests.worker_helpers import Project, ready, wait_until, worker_process

SHOP = """
topology:
  queues:
    - name: work
      bindings: []
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def listener() -> Iterator[int]:
    """A port where something listens (and never speaks AMQP or HTTP): not the broker the user wanted."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield int(s.getsockname()[1])


# --- the broker asked for, not whatever answers on 15672 ------------------------------------------------------


@pytest.mark.broker
def test_status_for_a_port_where_nothing_listens_says_it_cannot_reach_that_broker(tmp_path: Path) -> None:
    port = free_port()

    result = run(["status", "--all", "--broker", f"amqp://guest:guest@127.0.0.1:{port}/vh"], cwd=tmp_path)

    assert result.code == 1, str(result)
    assert result.stdout == ""  # no table of the broker on 5672/15672
    assert result.stderr.startswith(f"error: cannot reach the broker at 127.0.0.1:{port} (Connection refused)")
    assert "http://127.0.0.1:15672 belongs to the broker listening for AMQP on 5672" in result.stderr
    assert "set broker.management_url" in result.stderr


@pytest.mark.broker
def test_status_for_another_listener_refuses_the_management_api_of_the_default_broker(
    tmp_path: Path, listener: int
) -> None:
    write(tmp_path, "app.yaml", SHOP)

    result = run(["status", "app.yaml", "--broker", f"amqp://guest:guest@127.0.0.1:{listener}/vh"], cwd=tmp_path)

    assert result.code == 1, str(result)
    assert result.stdout == ""
    assert result.stderr.startswith(f"error: no management API found for the broker at 127.0.0.1:{listener}:")


# --- -A ---------------------------------------------------------------------------------------------------------


def _module(tmp_path: Path) -> None:
    (tmp_path / "proj.py").write_text("from amqptasks import App\n\nshop = App()\n\n\ndef helper():\n    pass\n")


def test_worker_app_option_names_the_missing_attribute(tmp_path: Path) -> None:
    _module(tmp_path)

    result = run(["worker", "-A", "proj:nosuch", "-Q", "work"], cwd=tmp_path)

    assert result.code == 2, str(result)
    assert "module 'proj' has no attribute 'nosuch' (it defines shop, so write -A proj:shop)" in result.stderr


def test_worker_app_option_without_attribute_explains_the_form(tmp_path: Path) -> None:
    _module(tmp_path)

    result = run(["worker", "-A", "proj", "-Q", "work"], cwd=tmp_path)

    assert result.code == 2, str(result)
    assert "module 'proj' has no attribute 'app' (it defines shop, so write -A proj:shop)" in result.stderr
    assert "-A takes MODULE:ATTRIBUTE" in result.stderr


def test_worker_app_option_pointing_at_something_else_says_what_it_is(tmp_path: Path) -> None:
    _module(tmp_path)

    result = run(["beat", "-A", "proj:helper"], cwd=tmp_path)

    assert result.code == 2, str(result)
    assert "proj:helper is a function, not an amqptasks App" in result.stderr


def test_a_module_that_fails_to_import_is_reported_with_where_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("from amqptasks import App\n\napp = App()\nsetup_logging()\n")

    result = run(["worker", "-A", "broken:app", "-Q", "work"], cwd=tmp_path)

    assert result.code == 2, str(result)
    assert (
        f"importing 'broken' raised NameError: name 'setup_logging' is not defined (at {tmp_path / 'broken.py'}:4)"
        in result.stderr
    )


def test_an_app_whose_yaml_is_invalid_gives_the_yaml_error(tmp_path: Path) -> None:
    (tmp_path / "proj.py").write_text("from amqptasks import App\n\napp = App.from_config('app.yaml')\n")
    write(tmp_path, "app.yaml", "topology:\n  queues: [work\n")

    result = run(["worker", "-A", "proj:app", "-Q", "work"], cwd=tmp_path)

    assert result.code == 1, str(result)
    assert result.stderr.startswith("error: app.yaml:2:11: YAML syntax error: a '[' opened here is never closed")


# --- worker -Q nosuch -------------------------------------------------------------------------------------------


@pytest.mark.broker
def test_worker_on_a_missing_queue_prints_only_our_error(tmp_path: Path, vhost: BrokerURL) -> None:
    project = Project.create(tmp_path, vhost, "@app.task(name='work.noop')\ndef noop():\n    pass\n")

    result = run(["worker", "-A", "tasks:app", "-Q", "nosuch"], cwd=tmp_path, env=project.env)

    assert result.code == 1, str(result)
    assert "Channel.Close" not in result.stderr and "pika" not in result.stderr
    assert result.stderr.rstrip().endswith(
        "error: queue 'nosuch' does not exist on the broker; declare it in the YAML and run "
        "'amqptasks topology apply', or check the -Q names"
    )


# --- dlq replay and show ----------------------------------------------------------------------------------------

FAILING = """
@app.task(name="work.sync", autoretry_for=(ConnectionError,), max_retries=1, default_retry_delay=0.05)
def sync(sku):
    record(task="work.sync", sku=sku)
    raise ConnectionError("inventory unreachable")
"""


def _dead_lettered(project: Project, channel: Any) -> str:
    """A task that failed twice (its one retry included) and waits in work.dlq; its id."""
    task_id = project.app().send_task("work.sync", ("SKU-1",)).id
    with worker_process(project, "-Q", "work"):
        wait_until(lambda: ready(channel, "work.dlq") == 1, timeout=30, what="the task in work.dlq")
    assert len(project.records()) == 2
    return task_id


@pytest.mark.broker
def test_dlq_replay_without_a_terminal_says_to_pass_yes(tmp_path: Path, vhost: BrokerURL, channel: Any) -> None:
    project = Project.create(tmp_path, vhost, FAILING)
    _dead_lettered(project, channel)

    result = run(["dlq", "replay", "work", "app.yaml", "--all"], cwd=tmp_path, env=project.env)

    assert result.code == 2, str(result)
    assert "pass --yes to go ahead without asking" in result.stderr
    assert "aborted" not in result.stderr
    assert ready(channel, "work.dlq") == 1


@pytest.mark.broker
@pytest.mark.parametrize(("option", "runs_after_replay"), [((), 2), (("--keep-retries",), 1)])
def test_a_replayed_task_gets_its_retries_again_unless_keep_retries(
    tmp_path: Path, vhost: BrokerURL, channel: Any, option: tuple[str, ...], runs_after_replay: int
) -> None:
    # Given a task dead-lettered after its one retry
    project = Project.create(tmp_path, vhost, FAILING)
    task_id = _dead_lettered(project, channel)

    # When it is replayed and a worker runs it again until it is back in the DLQ
    replayed = run(["dlq", "replay", "work", "app.yaml", "--id", task_id, "--yes", *option], cwd=tmp_path,
                   env=project.env)  # fmt: skip
    assert replayed.code == 0, str(replayed)
    with worker_process(project, "-Q", "work") as worker:
        worker.wait_for_log("dead-lettered", timeout=30)
        wait_until(lambda: ready(channel, "work.dlq") == 1, timeout=30, what="the task back in work.dlq")

    # Then it ran once more plus its retry (or, keeping its count, just once)
    assert len(project.records()) == 2 + runs_after_replay


@pytest.mark.broker
def test_dlq_show_leaves_out_the_delay_tiers_headers_unless_asked(
    tmp_path: Path, vhost: BrokerURL, channel: Any
) -> None:
    project = Project.create(tmp_path, vhost, FAILING)
    task_id = _dead_lettered(project, channel)

    shown = run(["dlq", "show", task_id, "work", "app.yaml"], cwd=tmp_path, env=project.env)
    everything = run(["dlq", "show", task_id, "work", "app.yaml", "--all-headers"], cwd=tmp_path, env=project.env)

    assert shown.code == everything.code == 0, f"{shown}\n{everything}"
    brief, full = shown.json(), everything.json()
    assert not [h for h in brief["headers"] if h.startswith("amqptasks.")]
    assert [d["queue"] for d in brief["x-death"]] == ["work"]
    assert brief["headers"]["task"] == "work.sync" and brief["headers"]["retries"] == 1
    assert "delay-tier headers and x-death entries (--all-headers shows them)" in brief["hidden"]
    assert any(h.startswith("amqptasks.d") for h in full["headers"]) and "hidden" not in full
    assert any(d["queue"].startswith("amqptasks.delay.") for d in full["x-death"])


# --- YAML syntax ------------------------------------------------------------------------------------------------


def test_a_yaml_indentation_error_is_a_plain_sentence(tmp_path: Path) -> None:
    write(tmp_path, "app.yaml", "topology:\n  queues:\n    - name: a\n      bindings: []\n     max_priority: 5\n")

    result = run(["topology", "validate", "app.yaml"], cwd=tmp_path)

    assert result.code == 2, str(result)
    assert result.stderr.splitlines()[0] == (
        "app.yaml:5:6: YAML syntax error: this line's indentation does not match the lines above it: keys of one "
        "mapping, and the items of one list, start in the same column (spaces only)"
    )
    assert "<block" not in result.stderr and "expected" not in result.stderr
