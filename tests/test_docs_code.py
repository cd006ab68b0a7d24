"""Code on the docs pages runs: the ``pycon`` sessions of docs/canvas.md, against a real worker subprocess.

Each ``>>> line`` is evaluated in this process (the publisher) with the page's tasks; the line after it is
what the page promises, compared with the result's repr.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from amqptasks.broker import BrokerURL
from amqptasks.constants import ENV_BROKER_URL
from tests.worker_helpers import YAML, Project, worker_process

ROOT = Path(__file__).resolve().parent.parent
SESSION = re.compile(r"^```pycon\n(.*?)^```", re.DOTALL | re.MULTILINE)
#: The tasks the page names; the module name is unique so that no other test's ``tasks`` module is reused.
MODULE = "docs_canvas_tasks"
TASKS = """
from amqptasks import App

app = App.from_config("app.yaml")


@app.task(name="work.add")
def add(x, y):
    return x + y


@app.task(name="work.tsum")
def tsum(numbers):
    return sum(numbers)
"""


def sessions(page: str) -> list[tuple[str, str | None]]:
    """(statement, the output the page shows under it, or None) for every ``>>>`` line of the page."""
    pairs: list[tuple[str, str | None]] = []
    for block in SESSION.findall((ROOT / "docs" / page).read_text(encoding="utf-8")):
        lines = block.splitlines()
        for i, line in enumerate(lines):
            if line.startswith(">>> "):
                following = lines[i + 1] if i + 1 < len(lines) and not lines[i + 1].startswith(">>> ") else None
                pairs.append((line[4:], following))
    return pairs


@pytest.fixture
def tasks_module(tmp_path: Path, vhost: BrokerURL, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    (tmp_path / "app.yaml").write_text(YAML + "results: {backend: 'rpc://'}\n", encoding="utf-8")
    (tmp_path / f"{MODULE}.py").write_text(TASKS, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(ENV_BROKER_URL, vhost.to_url())
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(MODULE)
    module.app.provision()
    try:
        yield module
    finally:
        module.app.close()
        sys.modules.pop(MODULE, None)


def test_the_canvas_page_has_a_session_with_results() -> None:
    assert sum(1 for _, shown in sessions("canvas.md") if shown is not None) >= 5


@pytest.mark.broker
@pytest.mark.timeout(180)
def test_the_canvas_page_session_gives_the_results_it_shows(tasks_module: ModuleType, tmp_path: Path) -> None:
    project = Project(tmp_path, BrokerURL.parse(tasks_module.app.config.broker.url))
    namespace = {"add": tasks_module.add, "tsum": tasks_module.tsum}
    # (-A given twice: the helper names tasks:app, and click keeps the last)
    with worker_process(project, "-A", f"{MODULE}:app", "-Q", "work") as worker:
        for statement, shown in sessions("canvas.md"):
            code = statement.split("  #")[0]
            if shown is None:
                exec(code, namespace)
                continue
            result = eval(code, namespace)
            assert repr(result) == shown, f"{statement}\ngave {result!r}, the page shows {shown}\n{worker.output}"
