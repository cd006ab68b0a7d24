"""``amqptasks topology validate | plan | apply | export | graph | schema``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import cast

import click

from amqptasks import topology as topo
from amqptasks.broker.memory import is_memory_url
from amqptasks.broker.url import BrokerURL, mask_url
from amqptasks.cli import output
from amqptasks.cli.common import EXIT_INVALID, config_options, load, resolve_path
from amqptasks.config import schema
from amqptasks.config.load import check_file
from amqptasks.topology.definitions import to_definitions
from amqptasks.topology.graph import Format, render
from amqptasks.topology.owners import count_text, split_counts

#: ``plan --detailed-exitcode``, as in terraform.
EXIT_NO_CHANGES, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2

_verbose = click.option(
    "-v", "--verbose", is_flag=True, help="List each of amqptasks' own objects (delay tiers, DLX) too."
)


@click.group("topology")
def topology_group() -> None:
    """Validate the YAML topology, plan it against the broker, apply it, export or draw it."""


@topology_group.command()
@config_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable diagnostics.")
def validate(config_path: str | None, broker_url: str | None, as_json: bool) -> None:
    """Check CONFIG without contacting the broker. Exit 0 when valid, 2 when not."""
    path = resolve_path(config_path)
    config, diags = check_file(path, broker_url=broker_url)
    if as_json:
        output.echo_json({"valid": not diags.errors, "diagnostics": [d.as_dict() for d in diags.items]})
    else:
        output.diagnostics(diags.items)
    if diags.errors or config is None:
        if not as_json:
            count = len(diags.errors)
            click.secho(f"{path}: {count} error{'s' if count != 1 else ''}", fg="red", err=True)
        raise SystemExit(EXIT_INVALID)
    if not as_json:
        yours, ours = split_counts(topo.desired(config.topology, config.delays))
        internal = f"; amqptasks' own: {count_text(ours)}" if ours else ""
        click.echo(f"{path}: valid (yours: {count_text(yours) or 'nothing'}{internal})")


@topology_group.command()
@config_options
@click.option("--prune", is_flag=True, help="Also list objects in the vhost that CONFIG no longer declares.")
@click.option("--detailed-exitcode", is_flag=True, help="Exit 0: no changes, 2: changes pending, 1: error.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable plan.")
@_verbose
def plan(
    config_path: str | None, broker_url: str | None, prune: bool, detailed_exitcode: bool, as_json: bool, verbose: bool
) -> None:
    """Show what `apply` would create, what is unchanged and what conflicts."""
    try:
        config = load(config_path, broker_url)
    except click.UsageError as exc:
        if not detailed_exitcode:
            raise
        exc.show()
        raise SystemExit(EXIT_ERROR) from None  # 2 would mean "changes pending"
    except SystemExit as exc:
        raise SystemExit(EXIT_ERROR if detailed_exitcode else exc.code) from None
    the_plan = topo.plan(config, prune=prune)
    where = mask_url(config.broker.url)
    if as_json:
        output.plan_json(the_plan, where)
    else:
        output.plan(the_plan, where, verbose=verbose)
    if the_plan.conflicts:
        raise SystemExit(EXIT_ERROR)
    if detailed_exitcode and the_plan.has_changes:
        raise SystemExit(EXIT_CHANGES)


@topology_group.command()
@config_options
@click.option("--prune", is_flag=True, help="Also delete objects in the vhost that CONFIG no longer declares.")
@_verbose
def apply(config_path: str | None, broker_url: str | None, prune: bool, verbose: bool) -> None:
    """Create what is missing. Changes nothing at all if any object conflicts."""
    config = load(config_path, broker_url)
    the_plan, result = topo.provision(config, prune=prune)  # raises TopologyConflict before any change
    for line in output.change_lines(result.done, verbose):
        click.echo(line)
    done = ", ".join(f"{result.count(a)} {verb}" for a, verb in (("create", "created"), ("delete", "deleted")))
    unchanged = len(the_plan.by_action("unchanged"))
    click.echo(f"applied to {mask_url(config.broker.url)}: {done}, {unchanged} unchanged")


@topology_group.command()
@config_options
@click.option("--format", "fmt", type=click.Choice(["definitions"]), default="definitions", show_default=True)
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False, writable=True), help="File (default: stdout).")
@click.option("--vhost", help="Vhost named in the definitions (default: the broker URL's).")
def export(config_path: str | None, broker_url: str | None, fmt: str, out: str | None, vhost: str | None) -> None:
    """Write RabbitMQ definitions JSON (for `rabbitmqctl import_definitions`)."""
    config = load(config_path, broker_url)
    default = "/" if is_memory_url(config.broker.url) else BrokerURL.parse(config.broker.url).vhost
    target = vhost if vhost is not None else default
    definitions = to_definitions(topo.desired(config.topology, config.delays), target)
    for warning in definitions.warnings:
        click.secho(f"warning: {warning}", fg="yellow", err=True)
    text = json.dumps(definitions.document, indent=2) + "\n"
    if out:
        _write(out, text.encode())
        click.echo(f"wrote {fmt} for vhost {target!r} to {out}", err=True)
    else:
        click.echo(text, nl=False)


@topology_group.command()
@config_options
@click.option(
    "--format", "fmt", type=click.Choice(["mermaid", "dot", "svg", "png"]), default="mermaid", show_default=True
)
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False, writable=True), help="File (default: stdout).")
def graph(config_path: str | None, broker_url: str | None, fmt: str, out: str | None) -> None:
    """Draw exchanges, queues and bindings (dead-letter edges dashed)."""
    config = load(config_path, broker_url, quiet_warnings=True)
    drawing = render(topo.desired(config.topology), cast(Format, fmt))
    if out:
        _write(out, drawing if isinstance(drawing, bytes) else drawing.encode())
        click.echo(f"wrote {fmt} graph to {out}", err=True)
    elif isinstance(drawing, bytes):
        if sys.stdout.isatty():
            raise click.UsageError("PNG is binary: write it to a file with -o graph.png")
        sys.stdout.buffer.write(drawing)
    else:
        click.echo(drawing, nl=not drawing.endswith("\n"))


def _write(path: str, data: bytes) -> None:
    try:
        Path(path).write_bytes(data)
    except OSError as exc:
        raise click.FileError(path, exc.strerror) from None


@topology_group.command("schema")
def schema_command() -> None:
    """Print the JSON Schema of the YAML (for yaml-language-server and other editors)."""
    click.echo(schema.render(), nl=False)
