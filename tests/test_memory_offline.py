"""memory:// with no network at all: a script in a network namespace of its own (``unshare -n``: no interface but a
loopback that is down) with ``AMQPTASKS_BROKER_URL=memory://`` retries a task through the delay tiers into its
dead-letter queue, holds a countdown until the virtual clock moves, refuses an unroutable task and applies one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("memory_app") / "offline.py"
ROOT = Path(__file__).resolve().parents[1]


def _unshare() -> list[str]:
    """The command prefix for a process without network; skipped (or failed under CI where it should work)."""
    path = shutil.which("unshare")
    expected = sys.platform == "linux" and os.geteuid() == 0 and path is not None
    reason = None
    if path is None:
        reason = "no unshare(1) on this machine"
    elif not sys.platform.startswith("linux"):
        reason = "network namespaces are Linux-only"
    else:
        probe = subprocess.run([path, "-n", "true"], capture_output=True, text=True, timeout=30)
        if probe.returncode != 0:
            reason = f"unshare -n is not permitted here: {probe.stderr.strip() or probe.returncode}"
    if reason is not None:
        if expected and os.environ.get("CI", "").strip().lower() in ("true", "1"):
            pytest.fail(f"{reason} -- as root on Linux it should work, and CI is set", pytrace=False)
        pytest.skip(reason)
    assert path is not None
    return [path, "-n"]


def test_memory_broker_runs_the_failure_path_with_no_network() -> None:
    env = {**os.environ, "AMQPTASKS_BROKER_URL": "memory://", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([*_unshare(), sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env,
                          timeout=120, cwd=ROOT)  # fmt: skip
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)

    assert seen["network"] == "Network is unreachable"  # there really was no network
    assert seen["broker_url"] == "memory://"
    # max_retries=3: the first run and three retries, then dead-lettered (drain's fail_fast re-raises it).
    assert seen["runs"] == [0, 1, 2, 3]
    assert seen["drain_raised"] == "MaxRetriesExceeded"
    assert len(seen["dlq"]) == 1
    dead = seen["dlq"][0]
    assert dead["task"] == "__main__.always_retries"
    assert dead["reason"] == "rejected"
    assert dead["x-death"][0] == ["work", "rejected"]
    # countdown=60: not due under drain(app); due once drain(app, advance_time=True) moves the clock.
    assert seen["countdown_after_drain"] == []
    assert seen["countdown_after_advance"] == ["countdown"]
    assert seen["unroutable"] == (
        "message to exchange 'tasks' with routing key 'nowhere' is unroutable: no queue is bound for it "
        "(check the bindings in your topology YAML)"
    )
    assert seen["apply"] == 5
