"""Run the installed ``amqptasks`` console script the way a user does, and read what it printed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amqptasks.constants import ENV_BROKER_URL, ENV_CONFIG

#: Every invocation is bounded, so a hung connect attempt fails one test instead of the whole run.
TIMEOUT = 30


def console_script() -> str:
    """The ``amqptasks`` entry point of the running interpreter's environment (the project's venv)."""
    beside = Path(sys.executable).parent / "amqptasks"
    if beside.exists():
        return str(beside)
    found = shutil.which("amqptasks")
    if found is None:
        raise RuntimeError("the amqptasks console script is not installed: pip install -e '.[dev]'")
    return found


@dataclass(frozen=True)
class Result:
    """What a user sees after running one command."""

    args: tuple[str, ...]
    code: int
    stdout: str
    stderr: str

    @property
    def change_lines(self) -> list[str]:
        """The indented object lines of ``plan``/``apply`` ("+ create    queue 'billing'"), stripped."""
        return [line.strip() for line in self.stdout.splitlines() if line.startswith("  ")]

    def json(self) -> Any:
        return json.loads(self.stdout)

    def __str__(self) -> str:
        return (
            f"$ amqptasks {' '.join(self.args)}\n[exit {self.code}]\n--- stdout\n{self.stdout}--- stderr\n{self.stderr}"
        )


def run(args: Sequence[str], *, cwd: Path, env: Mapping[str, str] | None = None) -> Result:
    """Run ``amqptasks *args`` in *cwd*; the user's AMQPTASKS_* variables are cleared unless *env* sets them.

    No command may ever answer with a Python traceback, so every run checks that, success or failure.
    """
    environment = {k: v for k, v in os.environ.items() if k not in (ENV_BROKER_URL, ENV_CONFIG)}
    environment.update(env or {})
    completed = subprocess.run(
        [console_script(), *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    result = Result(tuple(args), completed.returncode, completed.stdout, completed.stderr)
    assert "Traceback" not in result.stderr + result.stdout, f"a traceback reached the user:\n{result}"
    return result


def write(directory: Path, name: str, text: str) -> str:
    """Write a dedented YAML file; returns its text (to locate lines in it)."""
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    content = textwrap.dedent(text).lstrip("\n")
    path.write_text(content, encoding="utf-8")
    return content


def position(text: str, line_containing: str, token: str | None = None) -> tuple[int, int]:
    """1-based (line, column) of *token* (default: *line_containing* itself) on the first line containing it."""
    for number, line in enumerate(text.splitlines(), start=1):
        if line_containing in line:
            return number, line.index(token or line_containing) + 1
    raise AssertionError(f"{line_containing!r} is not in the YAML")


def line_of(text: str, line_containing: str) -> int:
    return position(text, line_containing)[0]
