"""``amqptasks status`` — queue depths, consumers, rates and dead letters, read from the management API."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence

import click

from amqptasks.broker.management import ManagementClient
from amqptasks.broker.management_target import management_client
from amqptasks.broker.memory import is_memory_url
from amqptasks.broker.url import BrokerURL
from amqptasks.cli import output
from amqptasks.cli.common import config_options, load
from amqptasks.constants import ENV_CONFIG, UNROUTABLE_EXCHANGE
from amqptasks.errors import ManagementAPIError
from amqptasks.monitor.status import QueueRow, Snapshot, build_snapshot

_HEADINGS = ("QUEUE", "READY", "UNACKED", "CONSUMERS", "PUBLISH/S", "DELIVER/S", "DLQ", "FLAGS")
_NEEDS_API = (
    "amqptasks status needs the RabbitMQ management API: enable it with "
    "'rabbitmq-plugins enable rabbitmq_management', or set broker.management_url if it listens elsewhere"
)


@click.command("status")
@config_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable list of queue rows.")
@click.option(
    "--watch",
    type=click.FloatRange(min=0.1),
    is_flag=False,
    flag_value=2.0,
    default=None,
    metavar="[SECONDS]",
    help="Refresh every SECONDS (default 2) until Ctrl-C.",
)
@click.option("--all", "show_all", is_flag=True, help="Every queue in the vhost, amqptasks' own included.")
def status_command(
    config_path: str | None, broker_url: str | None, as_json: bool, watch: float | None, show_all: bool
) -> None:
    """Show each queue CONFIG declares: ready, unacked, consumers, rates, DLQ depth and flags."""
    client, url, declared = _target(config_path, broker_url, show_all)
    if watch is None:
        _show(read_snapshot(client, url.vhost, declared), url, as_json)
        return
    clear = sys.stdout.isatty() and not as_json
    try:
        while True:
            snapshot = read_snapshot(client, url.vhost, declared)
            if clear:
                click.clear()
            _show(snapshot, url, as_json)
            time.sleep(watch)
    except KeyboardInterrupt:
        return  # Ctrl-C is how a watch ends


def read_snapshot(client: ManagementClient, vhost: str, declared: Sequence[str] | None) -> Snapshot:
    try:
        queues = client.list_queues(vhost)
        bindings = client.list_bindings(vhost)
    except ManagementAPIError as exc:
        if exc.status == 404:
            raise ManagementAPIError(f"vhost {vhost!r} does not exist on {client.base_url}", 404) from None
        if exc.status is None:  # nothing answered: most often the plugin is off or listens elsewhere
            raise ManagementAPIError(f"{exc}\n{_NEEDS_API}") from None
        raise
    return build_snapshot(queues, bindings, declared=declared)


def _target(
    config_path: str | None, broker_url: str | None, show_all: bool
) -> tuple[ManagementClient, BrokerURL, list[str] | None]:
    # `--all --broker URL` needs no YAML: nothing declared is compared.
    if show_all and broker_url and not (config_path or os.environ.get(ENV_CONFIG)):
        try:
            url = BrokerURL.parse(broker_url)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--broker") from None
        return management_client(url), url, None
    config = load(config_path, broker_url)
    if is_memory_url(config.broker.url):
        raise click.UsageError(
            "status reads RabbitMQ's management API, which memory:// (a broker inside one process) does not have; "
            "in that process, amqptasks.testing.messages(app, queue) shows what a queue holds"
        )
    url = BrokerURL.parse(config.broker.url)
    client = management_client(url, config.broker.management_url)
    return client, url, None if show_all else [q.name for q in config.topology.queues]


def _show(snapshot: Snapshot, url: BrokerURL, as_json: bool) -> None:
    if as_json:
        output.echo_json([row.as_dict() for row in snapshot.rows])
        return
    click.echo(f"broker {url.masked()}  vhost {url.vhost!r}")
    cells = [_HEADINGS, *(_cells(row) for row in snapshot.rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(_HEADINGS))]
    for number, line in enumerate(cells):
        text = "  ".join(
            cell.ljust(width) if i in (0, len(widths) - 1) else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        )
        flagged = number > 0 and bool(line[-1])
        click.secho(text.rstrip(), fg="red" if flagged else None, bold=number == 0)
    if not snapshot.rows:
        click.echo("(no queues)")
    if snapshot.delayed:
        click.echo(f"delayed: {snapshot.delayed} messages waiting in the delay tiers")
    if snapshot.unroutable:
        click.secho(f"{UNROUTABLE_EXCHANGE}: {snapshot.unroutable} messages could not be routed", fg="red")


def _cells(row: QueueRow) -> tuple[str, ...]:
    dlq = "-" if row.dlq_depth is None else str(row.dlq_depth)
    return (
        row.queue,
        str(row.ready),
        str(row.unacked),
        str(row.consumers),
        _rate(row.publish_rate),
        _rate(row.deliver_rate),
        dlq,
        ", ".join(row.flags),
    )


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
