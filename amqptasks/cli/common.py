"""Options every command shares: the CONFIG argument and ``--broker``; loading with clear errors."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import click

from amqptasks.cli import output
from amqptasks.config.load import check_file
from amqptasks.config.model import Config
from amqptasks.constants import ENV_CONFIG

F = TypeVar("F", bound=Callable[..., Any])

#: Exit status for invalid input (bad YAML, bad arguments), as click uses for usage errors.
EXIT_INVALID = 2


def config_options(func: F) -> F:
    func = click.option(
        "--broker",
        "broker_url",
        metavar="URL",
        envvar=None,
        help="Broker URL (vhost included); overrides the YAML and AMQPTASKS_BROKER_URL.",
    )(func)
    return click.argument("config_path", metavar="CONFIG", required=False, type=click.Path(dir_okay=False))(func)


def resolve_path(config_path: str | None) -> str:
    path = config_path or os.environ.get(ENV_CONFIG)
    if not path:
        raise click.UsageError(f"no configuration given: pass CONFIG or set {ENV_CONFIG}")
    return path


def load(config_path: str | None, broker_url: str | None, *, quiet_warnings: bool = False) -> Config:
    """Load and validate, printing every diagnostic; exits with status 2 when there are errors."""
    config, diags = check_file(resolve_path(config_path), broker_url=broker_url)
    if not quiet_warnings:
        output.diagnostics(diags.warnings)
    if diags.errors or config is None:
        output.diagnostics(diags.errors)
        count = len(diags.errors)
        click.secho(f"{count} error{'s' if count != 1 else ''}; nothing was done", fg="red", err=True)
        raise SystemExit(EXIT_INVALID)
    return config
