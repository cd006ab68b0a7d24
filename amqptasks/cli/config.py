"""``amqptasks config show``."""

from __future__ import annotations

import click
import yaml

from amqptasks.cli import output
from amqptasks.cli.common import config_options, load
from amqptasks.config.dump import as_plain


@click.group("config")
def config_group() -> None:
    """Inspect the effective configuration."""


@config_group.command()
@config_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of YAML.")
def show(config_path: str | None, broker_url: str | None, as_json: bool) -> None:
    """Print the effective configuration (includes merged, defaults filled in, secrets masked)."""
    data = as_plain(load(config_path, broker_url))
    if as_json:
        output.echo_json(data)
    else:
        click.echo(yaml.safe_dump(data, sort_keys=False, default_flow_style=False), nl=False)
