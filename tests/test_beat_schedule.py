"""The beat: section and run times (pure: no broker)."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta

import pytest

from amqptasks import App
from amqptasks.beat import entries_of, periodic
from amqptasks.beat.schedule import EPOCH, Entry, from_config, parse_every, task_id, zone
from amqptasks.config import check_text, load_config_text
from tests.cli_helpers import position

YAML = """
beat:
  timezone: Europe/Paris
  entries:
    cleanup:
      task: reports.cleanup
      cron: "0 3 * * mon"
      args: [30, "old"]
      kwargs: {dry_run: false, tags: [a, b]}
      options: {queue: low, priority: 3, expires: 600}
    ping: {task: health.ping, every: "30s"}
    tick: {task: health.tick, every: 2.5}
"""


def errors_of(text: str) -> list[str]:
    config, diags = check_text(textwrap.dedent(text).lstrip("\n"), "app.yaml")
    assert config is None
    return [str(d) for d in diags.errors]


def test_entries_parse_with_every_cron_and_timezone() -> None:
    config = load_config_text(textwrap.dedent(YAML), "app.yaml")
    entries = from_config(config.beat)
    cleanup, ping, tick = entries["cleanup"], entries["ping"], entries["tick"]
    assert (cleanup.task, cleanup.cron, cleanup.every) == ("reports.cleanup", "0 3 * * mon", None)
    assert cleanup.args == (30, "old")
    assert cleanup.kwargs == {"dry_run": False, "tags": ["a", "b"]}
    assert cleanup.options == {"queue": "low", "priority": 3, "expires": 600.0}
    assert cleanup.timezone.key == "Europe/Paris"
    assert (ping.every, tick.every) == (30.0, 2.5)


def test_cron_runs_at_local_time_of_the_timezone() -> None:
    config = load_config_text(textwrap.dedent(YAML), "app.yaml")
    cleanup = from_config(config.beat)["cleanup"]
    # Monday 03:00 in Paris: 02:00 UTC in winter (CET), 01:00 UTC in summer (CEST).
    assert cleanup.next_after(datetime(2026, 1, 1, tzinfo=UTC)) == datetime(2026, 1, 5, 2, tzinfo=UTC)
    assert cleanup.next_after(datetime(2026, 7, 1, tzinfo=UTC)) == datetime(2026, 7, 6, 1, tzinfo=UTC)


def test_every_keeps_a_fixed_cadence_whoever_computes_it() -> None:
    entry = Entry(name="ping", task="health.ping", every=5)
    moment = datetime(2026, 3, 1, 12, 0, 2, 345000, tzinfo=UTC)
    first = entry.next_after(moment)
    assert first == datetime(2026, 3, 1, 12, 0, 5, tzinfo=UTC)
    assert entry.next_after(first) == first + timedelta(seconds=5)  # strictly after
    assert (first - EPOCH) % timedelta(seconds=5) == timedelta(0)


def test_run_ids_are_deterministic() -> None:
    when = datetime(2026, 3, 1, 13, 0, 5, tzinfo=zone("Europe/Paris"))
    assert task_id("ping", when) == "beat:ping:2026-03-01T12:00:05.000+00:00"


@pytest.mark.parametrize(
    ("value", "seconds"), [(30, 30.0), ("30s", 30.0), ("5m", 300.0), ("250ms", 0.25), ("1h", 3600.0)]
)
def test_every_accepts_seconds_and_durations(value: float | str, seconds: float) -> None:
    assert parse_every(value) == seconds


def test_bad_cron_is_reported_at_its_line_and_column() -> None:
    text = textwrap.dedent("""
        beat:
          entries:
            nightly: {task: reports.cleanup, cron: "0 25 * * *"}
    """).lstrip("\n")
    line, col = position(text, '"0 25 * * *"')
    assert errors_of(text) == [
        f"app.yaml:{line}:{col}: beat entry 'nightly': invalid cron expression '0 25 * * *' "
        "(5 fields: minute hour day-of-month month day-of-week)"
    ]


def test_every_and_cron_together_are_an_error() -> None:
    text = textwrap.dedent("""
        beat:
          entries:
            both:
              task: health.ping
              every: 30s
              cron: "* * * * *"
    """).lstrip("\n")
    line, col = position(text, "task: health.ping")
    assert errors_of(text) == [
        f"app.yaml:{line}:{col}: beat entry 'both': give exactly one of 'every' (an interval) and 'cron' "
        "(a cron expression)"
    ]


def test_missing_schedule_bad_interval_and_unknown_timezone_are_errors() -> None:
    text = textwrap.dedent("""
        beat:
          timezone: Mars/Olympus
          entries:
            none: {task: a}
            weekly: {task: b, every: "2 weeks"}
    """).lstrip("\n")
    found = errors_of(text)
    assert len(found) == 3
    assert "unknown time zone 'Mars/Olympus'" in found[0]
    assert "beat entry 'none': give exactly one of 'every'" in found[1]
    assert "beat entry 'weekly': every: expected seconds or a duration" in found[2]


def test_unknown_entry_key_suggests_the_right_one() -> None:
    text = "beat: {entries: {ping: {task: a, evry: 3}}}\n"
    assert any("unknown key 'evry' (did you mean 'every'?)" in e for e in errors_of(text))


def test_entries_added_in_code_join_the_yaml_entries() -> None:
    # Given an app with one YAML entry
    app = App(config=load_config_text("beat: {entries: {ping: {task: health.ping, every: 30}}}", "app.yaml"))

    @app.task(name="reports.cleanup")
    def cleanup(days: int) -> None: ...

    # When entries are added in code
    periodic(app, "cleanup", cleanup, cron="0 3 * * mon", args=[7], options={"queue": "low"}, timezone="Europe/Paris")
    periodic(app, "tick", "health.tick", every="5m")

    # Then the scheduler sees all of them, and mistakes fail at once
    entries = entries_of(app)
    assert list(entries) == ["ping", "cleanup", "tick"]
    assert (entries["cleanup"].task, entries["cleanup"].args, entries["tick"].every) == ("reports.cleanup", (7,), 300)
    with pytest.raises(ValueError, match="already defined"):
        periodic(app, "ping", "health.ping", every=1)
    with pytest.raises(ValueError, match="exactly one of every and cron"):
        periodic(app, "both", "x", every=1, cron="* * * * *")
    with pytest.raises(ValueError, match="invalid cron"):
        periodic(app, "bad", "x", cron="0 25 * * *")
    with pytest.raises(ValueError, match="unknown options"):
        periodic(app, "opt", "x", every=1, options={"countdown": 3})
