"""amqptasks beat on a real broker: cadence, deterministic ids, one leader per vhost, takeover after a crash."""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from amqptasks.beat.scheduler import Scheduler
from amqptasks.broker import BrokerURL
from amqptasks.constants import ENV_BROKER_URL, ENV_CONFIG
from tests.cli_helpers import console_script, write
from tests.worker_helpers import YAML as WORKER_YAML
from tests.worker_helpers import Project, get_all, make_app, wait_until, worker_process

YAML = """
topology:
  provision: true
  queues: [{name: ticks}]
beat:
  entries:
    ping: {task: health.ping, every: 1s, args: [1], options: {queue: ticks}}
"""
ID_RE = re.compile(r"^beat:ping:(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00)$")


def task_ids(channel: Any) -> list[str]:
    return [props.headers["id"] for _, props, _ in get_all(channel, "ticks")]


def scheduled_times(ids: list[str]) -> list[datetime]:
    times = []
    for tid in ids:
        match = ID_RE.match(tid)
        assert match, f"not a deterministic beat id: {tid!r}"
        times.append(datetime.fromisoformat(match.group(1)))
    return times


def test_every_second_entry_is_sent_once_a_second_with_deterministic_ids(vhost: BrokerURL, channel: Any) -> None:
    # Given an app with an every-1s entry, its scheduler running in a thread
    app = make_app(vhost, YAML)
    scheduler = Scheduler(app)
    thread = threading.Thread(target=scheduler.run)
    thread.start()
    try:
        # When it runs for about 3.5 s
        time.sleep(3.5)
    finally:
        scheduler.stop()
        thread.join(5)
        app.close()
    # Then 3 or 4 runs arrived, one second apart, each with the id of its scheduled time, none twice
    ids = task_ids(channel)
    assert 3 <= len(ids) <= 4, ids
    assert len(set(ids)) == len(ids)
    times = scheduled_times(ids)
    assert all(b - a == timedelta(seconds=1) for a, b in itertools.pairwise(times)), ids
    assert all(t.microsecond == 0 for t in times)  # on the fixed cadence, not start-up time + n s
    assert not thread.is_alive()


class BeatProcess:
    def __init__(self, directory: Path, vhost: BrokerURL, label: str) -> None:
        env = {k: v for k, v in os.environ.items() if k not in (ENV_BROKER_URL, ENV_CONFIG)}
        env[ENV_BROKER_URL] = vhost.to_url()
        self.log_path = directory / f"beat-{label}.log"
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [console_script(), "beat", "-A", "beatapp:app"], cwd=directory, env=env,
            stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    @property
    def output(self) -> str:
        return self.log_path.read_text()

    def sent(self) -> list[str]:
        return re.findall(r"beat: sent (\S+)", self.output)

    def wait_for(self, text: str, timeout: float = 15.0) -> float:
        """Waits until the log says *text*; returns when (time.monotonic())."""
        deadline = time.monotonic() + timeout
        while text not in self.output:
            assert self.process.poll() is None, f"beat exited before logging {text!r}:\n{self.output}"
            assert time.monotonic() < deadline, f"beat did not log {text!r} within {timeout} s:\n{self.output}"
            time.sleep(0.02)
        return time.monotonic()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        self._log.close()


@contextmanager
def beat_process(directory: Path, vhost: BrokerURL, label: str) -> Iterator[BeatProcess]:
    beat = BeatProcess(directory, vhost, label)
    try:
        yield beat
    finally:
        beat.stop()


def test_one_beat_leads_and_a_standby_takes_over_after_the_leader_is_killed(
    vhost: BrokerURL, channel: Any, tmp_path: Path
) -> None:
    # Given a project with an every-1s entry, a leading beat and a standby
    write(tmp_path, "app.yaml", YAML)
    (tmp_path / "beatapp.py").write_text("from amqptasks import App\n\napp = App.from_config('app.yaml')\n")
    make_app(vhost, YAML).close()  # the queue exists before anyone sends
    with beat_process(tmp_path, vhost, "a") as first:
        first.wait_for("beat: leader")
        assert "ping: health.ping, every 1 s; next " in first.output  # the banner lists entries and next runs
        with beat_process(tmp_path, vhost, "b") as second:
            second.wait_for("beat: standby")
            first.wait_for("beat: sent")
            time.sleep(2.5)
            # Then only the leader sends
            assert second.sent() == []
            # When the leader dies without a chance to clean up
            first.process.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            first.process.wait(5)
            # Then the standby leads and sends the next run within 10 s
            led = second.wait_for("beat: leader", timeout=10)
            resumed = second.wait_for("beat: sent", timeout=10 - (led - killed))
            print(f"takeover: leader after {led - killed:.2f} s, first run sent after {resumed - killed:.2f} s")
            time.sleep(1.5)
            second.process.send_signal(signal.SIGTERM)
            assert second.process.wait(10) == 0
            assert "beat: stopped" in second.output
    ids = task_ids(channel)
    sent_by_first, sent_by_second = first.sent(), second.sent()
    # And no scheduled time was sent twice; every message came from the one leader of its time
    assert len(set(ids)) == len(ids), ids
    assert sorted(ids) == sorted(sent_by_first + sent_by_second)
    assert len(sent_by_first) >= 3 and len(sent_by_second) >= 1
    assert max(scheduled_times(sent_by_first)) < min(scheduled_times(sent_by_second))


def test_worker_with_beat_sends_and_runs_periodic_tasks(vhost: BrokerURL, tmp_path: Path) -> None:
    # Given a project whose YAML has an every-1s entry for a task the worker runs
    yaml_text = WORKER_YAML + "beat:\n  entries:\n    ping: {task: health.ping, every: 1s, args: [7]}\n"
    tasks_code = """
        @app.task(name="health.ping", bind=True)
        def ping(self, n):
            record(n=n, id=self.request.id)
    """
    project = Project.create(tmp_path, vhost, tasks_code, yaml_text)
    # When a worker runs with --beat
    with worker_process(project, "-Q", "work", "--beat") as worker:
        wait_until(lambda: len(project.records()) >= 2, timeout=10, what="two periodic runs")
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0
    # Then the runs it scheduled were executed, with their deterministic ids
    records = project.records()
    assert all(r["n"] == 7 and ID_RE.match(r["id"]) for r in records), records
    assert len({r["id"] for r in records}) == len(records)
    assert "beat: leader" in worker.output and "beat: stopped" in worker.output
