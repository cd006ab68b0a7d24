"""How the CLI talks: diagnostics, plans and JSON. Colour only on a terminal (click strips it otherwise)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import click

from amqptasks.config.diagnostics import Diagnostic
from amqptasks.topology.owners import Folded, change_group, fold
from amqptasks.topology.plan import Change, Plan

_MARKS = {
    "create": ("+", "green"),
    "unchanged": ("=", None),
    "ensure": ("~", "cyan"),
    "conflict": ("!", "red"),
    "delete": ("-", "yellow"),
}


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def diagnostics(items: Iterable[Diagnostic]) -> None:
    for d in items:
        colour = "yellow" if d.severity == "warning" else "red"
        click.secho(str(d), fg=colour, err=True)


def error(message: str) -> None:
    click.secho(f"error: {message}", fg="red", err=True)


def change_line(change: Change | Folded) -> str:
    mark, colour = _MARKS[change.action]
    text = f"  {mark} {change.action:<9} {change.describe()}"
    return click.style(text, fg=colour, dim=change.action == "unchanged")


def change_lines(changes: tuple[Change, ...] | list[Change], verbose: bool) -> list[str]:
    """One line per change; amqptasks' own objects (delay tiers, DLX, unroutable) folded unless *verbose*."""
    shown = list(changes) if verbose else fold(changes)
    lines = [change_line(c) for c in shown]
    if any(isinstance(c, Folded) for c in shown):
        lines.append(
            click.style(
                "note: amqptasks' own objects are counted on one line per group; --verbose lists each", dim=True
            )
        )
    return lines


def plan(the_plan: Plan, where: str, *, verbose: bool = False) -> None:
    click.echo(f"plan for {where} (read through the {the_plan.source}):")
    for line in change_lines(the_plan.changes, verbose):
        click.echo(line)
    for note in the_plan.notes:
        click.secho(f"note: {note}", dim=True)
    summary = the_plan.summary() or "nothing declared"
    if not the_plan.has_changes:
        summary += " - nothing to change"
    click.echo(summary)


def plan_json(the_plan: Plan, where: str) -> None:
    echo_json(
        {
            "broker": where,
            "source": the_plan.source,
            "rabbitmq_version": the_plan.rabbitmq_version,
            "has_changes": the_plan.has_changes,
            # "internal": which of amqptasks' own groups (delays, dlx, unroutable) an object belongs to, else null
            "changes": [{**c.as_dict(), "internal": change_group(c)} for c in the_plan.changes],
            "notes": list(the_plan.notes),
        }
    )
