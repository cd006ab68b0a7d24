"""``amqptasks inspect ...`` asks every running worker; ``amqptasks control ...`` tells them.

Celery's remote-control protocol (control/pidbox.py): Celery's workers answer these too, and ``celery inspect``
gets answers from ours."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import click

from amqptasks.cli.common import config_options, load
from amqptasks.control import client
from amqptasks.control.client import broadcast

F = TypeVar("F", bound=Callable[..., Any])


def _timeout(func: F) -> F:
    return click.option("--timeout", type=click.FloatRange(min=0.05), default=1.0, show_default=True,
                        help="Seconds to collect replies.")(func)  # fmt: skip


def _json(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="The replies as a JSON list.")(func)


def _show(replies: list[dict[str, Any]], as_json: bool, nobody: str | None = None) -> None:
    """One block per worker, by hostname; exit 1 when no worker answered (unless *nobody* says why that is fine)."""
    if as_json:
        click.echo(json.dumps(replies, indent=2, sort_keys=True, default=str))
    for reply in sorted(replies, key=lambda r: str(r.get("hostname"))):
        if as_json:
            break
        if "error" in reply:
            click.echo(f"{reply.get('hostname')}: ERROR {reply['error']}")
            continue
        value = reply.get("ok")
        if isinstance(value, str):
            click.echo(f"{reply.get('hostname')}: {value}")
            continue
        click.echo(f"{reply.get('hostname')}:")
        items = value.items() if isinstance(value, dict) else enumerate(value or [])
        if not value:
            click.echo("  (none)")
        for key, item in items:
            text = json.dumps(item, sort_keys=True, default=str) if isinstance(item, dict | list) else str(item)
            click.echo(f"  {text}" if isinstance(value, list) else f"  {key}: {text}")
    if not replies and nobody is not None:
        click.echo(nobody, err=True)
    elif not replies:
        raise click.ClickException("no worker replied (is one running on this broker and vhost?)")


@click.group("inspect")
def inspect_group() -> None:
    """Ask every running worker (ours and Celery's): ping, registered, active, stats, ..."""


def _inspect_command(name: str, help_text: str) -> None:
    @inspect_group.command(name, help=help_text)
    @config_options
    @_timeout
    @_json
    def command(config_path: str | None, broker_url: str | None, timeout: float, as_json: bool) -> None:
        _show(broadcast(load(config_path, broker_url), name, timeout=timeout), as_json)


_inspect_command("ping", "Which workers are alive.")
_inspect_command("registered", "The tasks each worker knows.")
_inspect_command("active", "The tasks each worker is running now.")
_inspect_command("stats", "Each worker's pid, pool, concurrency, counts and uptime.")
_inspect_command("reserved", "The tasks each worker holds, not yet started.")
_inspect_command("scheduled", "The tasks each worker holds for a later eta (ours keep none: they wait on the broker).")
_inspect_command("revoked", "The task ids each worker was told to revoke.")
_inspect_command("active_queues", "The queues each worker consumes.")
_inspect_command("conf", "Each worker's settings.")


@click.group("control")
def control_group() -> None:
    """Tell every running worker (ours and Celery's): rate_limit, revoke, shutdown."""


@control_group.command("rate_limit")
@click.argument("task")
@click.argument("rate")
@config_options
@_timeout
@_json
def rate_limit_command(
    task: str, rate: str, config_path: str | None, broker_url: str | None, timeout: float, as_json: bool
) -> None:
    """Set TASK's rate limit (10/s, 100/m, 1000/h; "none" goes back to the task's own) in running workers."""
    config = load(config_path, broker_url)
    _show(client.rate_limit(config, task, None if rate.lower() == "none" else rate, timeout=timeout), as_json)


@control_group.command("revoke")
@click.argument("task_id")
@click.option("--terminate", is_flag=True, help="Also stop it if it is running (see docs/monitoring.md per pool).")
@config_options
@_timeout
@_json
def revoke_command(
    task_id: str, terminate: bool, config_path: str | None, broker_url: str | None, timeout: float, as_json: bool
) -> None:
    """Never run TASK_ID: the workers running now are told, and the revocation is stored on the broker for 3 hours
    so that workers started later honour it too."""
    replies = client.revoke(load(config_path, broker_url), task_id, terminate=terminate, timeout=timeout)
    nobody = f"no worker replied: the revocation of {task_id} is stored, and workers started within 3 hours honour it"
    _show(replies, as_json, nobody)


@control_group.command("shutdown")
@click.option("-d", "--destination", help="Comma-separated worker names (default: every worker).")
@config_options
@_timeout
def shutdown_command(destination: str | None, config_path: str | None, broker_url: str | None, timeout: float) -> None:
    """Warm shutdown of running workers (each finishes its running tasks)."""
    names = [d.strip() for d in destination.split(",") if d.strip()] if destination else None
    broadcast(load(config_path, broker_url), "shutdown", timeout=timeout, reply=False, destination=names)
    click.echo(f"shutdown sent to {', '.join(names) if names else 'every worker'}")
