"""``amqptasks send TASK_NAME`` — publish a task by name from the shell; prints its id."""

from __future__ import annotations

import json
from typing import Any

import click

from amqptasks.app import App
from amqptasks.cli.common import config_options, load
from amqptasks.errors import UnroutableError


def _json(value: str, option: str, kind: type) -> Any:
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        message = f"not valid JSON ({exc.msg} at column {exc.colno}): {value}"
        raise click.BadParameter(message, param_hint=option) from None
    if not isinstance(parsed, kind):
        raise click.BadParameter(f"must be a JSON {'list' if kind is list else 'object'}", param_hint=option)
    return parsed


def _header(values: tuple[str, ...]) -> dict[str, str]:
    headers = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not key=value", param_hint="--header")
        headers[key] = value
    return headers


@click.command("send")
@click.argument("task_name")
@config_options
@click.option("--args", "args_json", default="[]", show_default=True, help="Positional arguments, a JSON list.")
@click.option("--kwargs", "kwargs_json", default="{}", show_default=True, help="Keyword arguments, a JSON object.")
@click.option("--exchange", help="Exchange to publish to (default: from routes).")
@click.option("--routing-key", help="Routing key.")
@click.option("--queue", help="Publish straight to this queue (default exchange).")
@click.option("--priority", type=click.IntRange(0, 255), help="Message priority.")
@click.option("--countdown", type=click.FloatRange(min=0), help="Seconds to wait (broker-side) before delivery.")
@click.option("--expires", type=click.FloatRange(min=0, min_open=True), help="Seconds until the task expires.")
@click.option("--header", "headers", multiple=True, metavar="K=V", help="Extra message header (repeatable).")
def send_command(
    task_name: str,
    config_path: str | None,
    broker_url: str | None,
    args_json: str,
    kwargs_json: str,
    exchange: str | None,
    routing_key: str | None,
    queue: str | None,
    priority: int | None,
    countdown: float | None,
    expires: float | None,
    headers: tuple[str, ...],
) -> None:
    """Publish TASK_NAME with confirms and print its task id. CONFIG gives routes and the broker."""
    args, kwargs = _json(args_json, "--args", list), _json(kwargs_json, "--kwargs", dict)
    options = {
        "exchange": exchange,
        "routing_key": routing_key,
        "queue": queue,
        "priority": priority,
        "countdown": countdown,
        "expires": expires,
        "headers": _header(headers) or None,
    }
    with App(config=load(config_path, broker_url)) as app:
        try:
            result = app.send_task(task_name, args, kwargs, **{k: v for k, v in options.items() if v is not None})
        except (UnroutableError, TypeError, ValueError) as exc:  # refused before or by the broker: fix the call
            raise click.UsageError(str(exc)) from None
    click.echo(result.id)
