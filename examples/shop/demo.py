"""What ``python3 dev.py demo`` runs: the example project end to end, as a user would run it by hand.

    python demo.py      (from this directory, with amqptasks installed and AMQPTASKS_BROKER_URL set)

It validates, plans and applies shop.yaml, starts the Procfile's workers (one per queue) as real processes,
runs service.py to publish tasks, shows `amqptasks status` and `amqptasks dlq list orders`, and stops the
workers it started. Standard library only; exit status 0 when every step worked.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

HERE = Path(__file__).resolve().parent
CONFIG = "shop.yaml"
#: Worker log lines that add nothing to the story (each task also logs "succeeded" or "failed").
QUIET = re.compile(r"\] (received|started)$| async publisher connected ")
LOG_PREFIX = re.compile(r"^\[[\d-]+ [\d:,]+ (\w+)/[\w-]+\] ")
TASK_ID = re.compile(r"\[([0-9a-f]{8})-[0-9a-f-]{27}\]")
_print_lock = threading.Lock()


class DemoFailed(Exception):
    pass


def say(text: str = "") -> None:
    with _print_lock:
        print(text, flush=True)


def step(title: str, command: str | None = None) -> None:
    say(f"\n==> {title}" + (f": {command}" if command else ""))


def run(command: str, ok: Callable[[int], bool] = lambda rc: rc == 0) -> str:
    """Run one command in this directory, print what it printed (indented), fail the demo on a bad exit."""
    completed = subprocess.run(shlex.split(command), cwd=HERE, capture_output=True, text=True, timeout=120)
    output = (completed.stdout + completed.stderr).rstrip()
    for line in output.splitlines():
        say(f"    {line}")
    if not ok(completed.returncode):
        raise DemoFailed(f"`{command}` exited with {completed.returncode}")
    return completed.stdout


def procfile() -> list[tuple[str, str]]:
    entries = []
    for line in (HERE / "Procfile").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, command = line.partition(":")
            entries.append((name.strip(), command.strip()))
    return entries


class Worker:
    """One Procfile entry as a process of its own, its output printed with the entry's name in front."""

    def __init__(self, name: str, command: str, width: int) -> None:
        self.name, self.command = name, command
        self.prefix = f"    {name.ljust(width)} | "
        self.ready = threading.Event()
        self.lines: list[str] = []
        # A session of its own: stopping the demo's workers never signals anything else.
        self.process = subprocess.Popen(
            shlex.split(command), cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip
        self._pump = threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True)
        self._pump.start()

    def _read(self, stream: IO[str] | None) -> None:
        assert stream is not None
        for raw in stream:
            line = raw.rstrip()
            self.lines.append(line)
            if "ready: consuming" in line:
                self.ready.set()
            if not QUIET.search(line):
                shown = TASK_ID.sub(r"[\1]", LOG_PREFIX.sub(lambda m: "" if m[1] == "INFO" else f"{m[1]} ", line))
                say(self.prefix + shown)

    def stop(self, grace: float = 30) -> int:
        """SIGTERM (a warm shutdown), then SIGKILL to the whole session if it has not exited after *grace*."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            say(f"{self.prefix}did not stop within {grace:.0f} s: killed")
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self._pump.join(5)
        return self.process.returncode


@contextmanager
def workers() -> Iterator[list[Worker]]:
    entries = procfile()
    width = max(len("service"), *(len(name) for name, _ in entries))
    started: list[Worker] = []
    try:
        for name, command in entries:
            say(f"    starting {name}: {command}")
            started.append(Worker(name, command, width))
        for worker in started:
            deadline = time.monotonic() + 60
            while not worker.ready.wait(0.1):
                if worker.process.poll() is not None or time.monotonic() > deadline:
                    raise DemoFailed(f"worker {worker.name!r} did not start:\n" + "\n".join(worker.lines[-20:]))
        yield started
    finally:
        step("stop the workers (SIGTERM: each finishes its running tasks, then exits)")
        codes = {w.name: w.stop() for w in started}
        say("    " + ", ".join(f"{name} exited with {code}" for name, code in codes.items()))


def service(width: int) -> None:
    prefix = f"    {'service'.ljust(width)} | "
    process = subprocess.Popen(
        [sys.executable, "service.py"], cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert process.stdout is not None
    for line in process.stdout:
        say(prefix + line.rstrip())
    if process.wait(120) != 0:
        raise DemoFailed(f"service.py exited with {process.returncode}")


def wait_for_dead_letter(queue: str, timeout: float = 30) -> None:
    """The failing task is rejected right after its failure is reported: wait until the DLQ holds it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = subprocess.run(
            ["amqptasks", "dlq", "list", queue, CONFIG, "--json"], cwd=HERE, capture_output=True, text=True, timeout=60
        )
        if listed.returncode == 0 and listed.stdout.strip() not in ("", "[]"):
            return
        time.sleep(0.3)
    raise DemoFailed(f"nothing reached {queue}.dlq within {timeout:.0f} s")


def wait_for_status(queue: str, timeout: float = 30) -> None:
    """The management API samples each queue's figures every few seconds, queue by queue: wait until its sample
    counts the dead letter and every queue's consumer, so the table shows what happened."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        shown = subprocess.run(
            ["amqptasks", "status", CONFIG, "--json"], cwd=HERE, capture_output=True, text=True, timeout=60
        )
        rows = json.loads(shown.stdout or "[]") if shown.returncode == 0 else []
        dead = any(row.get("queue") == queue and (row.get("dlq_depth") or 0) > 0 for row in rows)
        if dead and rows and all(row.get("consumers", 0) > 0 for row in rows):
            return
        time.sleep(0.5)


def main() -> int:
    step("1. check the example project's YAML (no broker needed)", f"amqptasks topology validate {CONFIG}")
    run(f"amqptasks topology validate {CONFIG}")
    step("2. compare it with the broker", f"amqptasks topology plan {CONFIG}")
    run(f"amqptasks topology plan {CONFIG}")
    step("3. create what is missing", f"amqptasks topology apply {CONFIG}")
    run(f"amqptasks topology apply {CONFIG}")
    step("4. start a worker per queue, as the Procfile says")
    with workers() as started:
        width = len(started[0].prefix) - 7
        step("5. a service publishes tasks while the workers run them", "python service.py")
        service(width)
        wait_for_dead_letter("orders")
        wait_for_status("orders")
        step("6. queue depths, consumers and dead letters", f"amqptasks status {CONFIG}")
        run(f"amqptasks status {CONFIG}")
        step("7. what failed, and why", f"amqptasks dlq list orders {CONFIG}")
        run(f"amqptasks dlq list orders {CONFIG}")
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the workers (finally) on SIGTERM too
    try:
        sys.exit(main())
    except DemoFailed as exc:
        print(f"\ndemo: FAILED: {exc}", file=sys.stderr)
        sys.exit(1)
