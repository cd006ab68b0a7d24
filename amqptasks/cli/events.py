"""``amqptasks events`` — follow the task events of workers started with ``--events``."""

from __future__ import annotations

import json
from typing import Any

import click

from amqptasks.cli.common import config_options, load
from amqptasks.monitor.events import EventFormatter, tail


@click.command("events")
@config_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object a line.")
@click.option("--limit", type=click.IntRange(min=1), help="Exit after N events.")
@click.option("--workers", is_flag=True, help="Also worker-online/heartbeat/offline.")
def events_command(
    config_path: str | None, broker_url: str | None, as_json: bool, limit: int | None, workers: bool
) -> None:
    """Print task events (received, started, succeeded, ...) as workers -- ours and Celery's -- publish them
    (Celery's event format, on the celeryev exchange), until Ctrl-C."""
    config = load(config_path, broker_url)
    format_event = EventFormatter()

    def show(event: dict[str, Any]) -> None:
        click.echo(json.dumps(event, sort_keys=True) if as_json else format_event(event))

    try:
        tail(config, show, limit=limit, workers=workers,
             ready=lambda: click.echo("following task events (Ctrl-C to stop)", err=True))  # fmt: skip
    except KeyboardInterrupt:
        return
