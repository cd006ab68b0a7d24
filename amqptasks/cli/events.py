"""``amqptasks events`` — follow the task events of workers started with ``--events``."""

from __future__ import annotations

import json
from typing import Any

import click

from amqptasks.cli.common import config_options, load
from amqptasks.monitor.events import format_event, tail


@click.command("events")
@config_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object a line.")
@click.option("--limit", type=click.IntRange(min=1), help="Exit after N events.")
def events_command(config_path: str | None, broker_url: str | None, as_json: bool, limit: int | None) -> None:
    """Print task events (received, started, succeeded, ...) as workers publish them, until Ctrl-C."""
    config = load(config_path, broker_url)

    def show(event: dict[str, Any]) -> None:
        click.echo(json.dumps(event, sort_keys=True) if as_json else format_event(event))

    try:
        tail(config, show, limit=limit, ready=lambda: click.echo("following task events (Ctrl-C to stop)", err=True))
    except KeyboardInterrupt:
        return
