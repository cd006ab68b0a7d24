"""The API users copy from Celery seeds, driven through real processes: ``--broker`` on ``worker`` and ``beat``,
``worker -n/--hostname`` with a warning when two live workers share a name, ``periodic(every=timedelta(...))``
and ``crontab(...)`` in code."""

from __future__ import annotations

import os
import signal
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from amqptasks import App, crontab
from amqptasks.beat import entries_of, periodic
from amqptasks.broker import BrokerURL
from amqptasks.control.client import broadcast
from amqptasks.worker.names import expand_hostname
from tests.cli_helpers import console_script
from tests.worker_helpers import Project, WorkerProcess, wait_until

YAML = """
topology:
  provision: true
  queues: [{name: work}]
routes: [{task: "*", queue: work}]
"""

TASKS = """
from datetime import timedelta
from amqptasks.beat import periodic


@app.task(bind=True)
def tick(self):
    record(id=self.request.id, hostname=self.request.hostname)


periodic(app, "tick", tick, every=timedelta(seconds=1))
"""


@pytest.mark.broker
def test_broker_flag_names_and_every_timedelta_through_real_worker_and_beat(tmp_path: Path, vhost: BrokerURL) -> None:
    # Given a project whose environment points at a broker that does not exist (only --broker can work)
    nowhere = BrokerURL.parse("amqp://guest:guest@127.0.0.1:1/%2F")
    project = Project.create(tmp_path, nowhere, TASKS, YAML)
    real = ["--broker", vhost.to_url()]
    first = WorkerProcess(project, *real, "-Q", "work", "--processes", "1", "-n", "flows-1@test")
    beat = subprocess.Popen([console_script(), "beat", "-A", "tasks:app", *real], cwd=tmp_path,
                            env={**os.environ, **project.env}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)  # fmt: skip
    second: WorkerProcess | None = None
    try:
        first.wait_for_log("ready: consuming")
        # When beat sends the every=timedelta(seconds=1) entry, over --broker
        wait_until(lambda: len(project.records()) >= 2, timeout=15, what="two periodic runs")
        # Then the worker named with -n ran them and answers control by that name
        assert {r["hostname"] for r in project.records()} == {"flows-1@test"}
        config = App(config=tmp_path / "app.yaml", broker_url=vhost.to_url()).config
        stats = broadcast(config, "stats", timeout=1.5)
        assert [s["hostname"] for s in stats] == ["flows-1@test"]
        # When a second worker starts with the same name
        second = WorkerProcess(project, *real, "-Q", "work", "--processes", "1", "-n", "flows-1@test")
        second.wait_for_log("another live worker is named 'flows-1@test'", timeout=15)
        # Then it warns, naming the other's pid, and the first one did not
        assert f"pid {first.pid}" in second.output
        assert "another live worker" not in first.output
    finally:
        beat.send_signal(signal.SIGTERM)
        beat.wait(10)
        first.kill()
        if second is not None:
            second.kill()


def test_crontab_in_code_is_celerys_schedule() -> None:
    app = App()
    # Given entries with a crontab object and a timedelta, as a Celery beat_schedule has them
    periodic(app, "report", "reports.daily", cron=crontab(minute=30, hour=9, day_of_week="mon-fri"))
    periodic(app, "quarter", "reports.q", schedule=crontab(minute="*/15"))
    periodic(app, "often", "health.ping", schedule=timedelta(minutes=5))
    entries = entries_of(app)
    # Then they run when Celery's would: Friday 2026-12-04 10:00 UTC -> Monday 09:30
    friday = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)
    assert entries["report"].next_after(friday) == datetime(2026, 12, 7, 9, 30, tzinfo=UTC)
    assert entries["quarter"].next_after(friday) == datetime(2026, 12, 4, 10, 15, tzinfo=UTC)
    assert entries["often"].every == 300
    # And a crontab that cannot be a schedule is refused when written, saying which field is wrong
    with pytest.raises(ValueError, match="hour 0-23"):
        crontab(hour=25)
    with pytest.raises(ValueError, match="one of every, cron and schedule"):
        periodic(app, "both", "x", every=1, schedule=crontab())


def test_worker_names_are_expanded_as_celery_does() -> None:
    assert expand_hostname("billing@%h", "web-3.example.com") == "billing@web-3.example.com"
    assert expand_hostname("billing-%n@%d", "web-3.example.com") == "billing-web-3@example.com"
    assert expand_hostname("billing", "web-3") == "billing"  # kept as given
    assert expand_hostname("100%%@%h", "web-3") == "100%@web-3"
