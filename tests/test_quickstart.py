"""docs/quickstart.md is run as a reader would run it: its files written, its commands run, their output compared.

Files are the code blocks whose first line is ``# file: NAME``; commands are the ``$ ...`` lines of its console
blocks, each followed by the output the page promises. The broker is the test's own vhost, shown in place of
the page's ``localhost:5672/%2F``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from amqptasks.broker import BrokerURL
from tests.cli_helpers import run
from tests.worker_helpers import Project, worker_process

ROOT = Path(__file__).resolve().parent.parent
PAGE = (ROOT / "docs" / "quickstart.md").read_text(encoding="utf-8")
FILE_BLOCK = re.compile(r"^```\w+\n# file: (\S+)\n(.*?)^```", re.DOTALL | re.MULTILINE)
CONSOLE_BLOCK = re.compile(r"^```console\n(.*?)^```", re.DOTALL | re.MULTILINE)
PAGE_BROKER = "amqp://guest:****@localhost:5672/%2F"


def files() -> dict[str, str]:
    return {name: text for name, text in FILE_BLOCK.findall(PAGE)}


def documented() -> dict[str, str]:
    """Each ``$ command`` of the page and the output shown under it."""
    outputs: dict[str, str] = {}
    for block in CONSOLE_BLOCK.findall(PAGE):
        command = None
        for line in block.splitlines():
            if line.startswith("$ "):
                command = line[2:].split("  #")[0].strip()
                outputs.setdefault(command, "")
            elif command is not None:
                outputs[command] += line + "\n"
    return outputs


def test_the_quickstart_has_its_project_files() -> None:
    assert set(files()) == {"hello.yaml", "tasks.py", "publish.py"}
    assert {"amqptasks topology validate hello.yaml", "python publish.py"} <= set(documented())


@pytest.fixture
def project(tmp_path: Path, vhost: BrokerURL) -> Project:
    for name, text in files().items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    return Project(tmp_path, vhost)


def amqptasks(project: Project, command: str) -> str:
    """Run one documented ``amqptasks ...`` command; its output as the page would show it."""
    result = run(command.split()[1:], cwd=project.path, env=project.env)
    assert result.code == 0, str(result)
    return (result.stdout + result.stderr).replace(project.vhost.masked(), PAGE_BROKER)


@pytest.mark.broker
@pytest.mark.timeout(120)
def test_the_quickstart_runs_as_written(project: Project) -> None:
    promised = documented()

    # validate, plan and apply print what the page shows
    for command in (
        "amqptasks topology validate hello.yaml",
        "amqptasks topology plan hello.yaml",
        "amqptasks topology apply hello.yaml",
    ):
        assert amqptasks(project, command) == promised[command], command

    # the worker's banner lists the queue with its binding and DLQ, and the tasks
    banner = promised["amqptasks worker -A tasks:app -Q hello"]
    with worker_process(project, "-Q", "hello") as worker:
        for line in banner.splitlines():
            if line.startswith(("    hello <-", "  tasks:")):
                assert line in worker.output, f"{line!r} not in the worker's banner:\n{worker.output}"

        # publish.py prints the result and the failure the page shows
        published = subprocess.run(
            [sys.executable, "publish.py"], cwd=project.path, env=project_env(project), capture_output=True,
            text=True, timeout=60,
        )  # fmt: skip
        assert published.returncode == 0, published.stderr
        assert published.stdout == promised["python publish.py"]
        worker.wait_for_log("dead-lettered", timeout=30)
        assert worker.output.count("hello.divide[") >= 3 and "retried in 0.5 s" in worker.output

    # dlq list shows the failed task with its error, in the page's columns
    listed = amqptasks(project, "amqptasks dlq list hello hello.yaml")
    page_rows = promised["amqptasks dlq list hello hello.yaml"].splitlines()
    rows = listed.splitlines()
    assert rows[0] == page_rows[0]
    assert re.match(r"hello\.divide +[0-9a-f-]{36} +\(1, 0\) +rejected +hello +hello +1 ", rows[1]), listed
    assert rows[1].endswith("ZeroDivisionError: division by zero")


def project_env(project: Project) -> dict[str, str]:
    return {**os.environ, **project.env}
