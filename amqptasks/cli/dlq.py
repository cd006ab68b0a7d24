"""``amqptasks dlq list|show|replay|purge QUEUE`` — inspect and recover dead letters.

QUEUE is the source queue (its dead letters are in ``QUEUE.dlq``) or the dead-letter queue itself.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import click

from amqptasks.cli import output
from amqptasks.cli.common import config_options, load
from amqptasks.constants import DELAY_BIT_HEADER_PREFIX, DELAY_TARGET_HEADER, DELAYED_HEADER, is_delay_name
from amqptasks.dlq import reader, replay
from amqptasks.dlq.reader import DeadLetter, queue_names

ARGS_WIDTH = 30
ERROR_WIDTH = 60


def _cut(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _summary(d: DeadLetter) -> dict[str, Any]:
    return {
        "task": d.task, "id": d.id, "args": d.args_excerpt, "reason": d.reason, "exchange": d.exchange,
        "routing_key": d.routing_key, "count": d.count,
        "first_death": d.first_death.isoformat() if d.first_death else None, "last_error": d.last_error,
    }  # fmt: skip


def _table(rows: list[dict[str, Any]]) -> None:
    columns = ["task", "id", "args", "reason", "exchange", "routing_key", "count", "first_death", "last_error"]
    cells = [[str(r[c] if r[c] is not None else "") for c in columns] for r in rows]
    cells = [[*row[:2], _cut(row[2], ARGS_WIDTH), *row[3:8], _cut(row[8], ERROR_WIDTH)] for row in cells]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _confirm(question: str, command: str) -> None:
    """Ask on a terminal; without one (a script, CI, a pipe) say to pass --yes instead of aborting silently."""
    if not sys.stdin.isatty():
        raise click.UsageError(f"{command} asks before it changes anything, and there is no terminal to ask on: "
                               "pass --yes to go ahead without asking")  # fmt: skip
    click.confirm(question, abort=True)


def _shown_headers(headers: dict[str, Any], everything: bool) -> tuple[dict[str, Any], list[Any], int]:
    """(headers, x-death entries, how many were hidden): the delay tiers' routing headers and the x-death
    entries of the tier queues a delayed retry passed through say nothing about why the task failed."""
    deaths = list(headers.get("x-death") or [])
    if everything:
        return headers, deaths, 0
    via_tiers = is_delay_name(str(headers.get("x-first-death-queue", "")))
    shown = {
        k: v
        for k, v in headers.items()
        if not (_is_delay_header(k) or k == "x-death" or (via_tiers and k.startswith("x-first-death-")))
    }
    kept = [d for d in deaths if not (isinstance(d, dict) and is_delay_name(str(d.get("queue", ""))))]
    return shown, kept, (len(headers) - len(shown) - ("x-death" in headers)) + len(deaths) - len(kept)


def _is_delay_header(name: str) -> bool:
    return name in (DELAY_TARGET_HEADER, DELAYED_HEADER) or (
        name.startswith(DELAY_BIT_HEADER_PREFIX) and name[len(DELAY_BIT_HEADER_PREFIX) :].isdigit()
    )


@click.group("dlq")
def dlq_group() -> None:
    """Inspect, replay and purge dead-letter queues."""


@dlq_group.command("list")
@click.argument("queue")
@config_options
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True, help="Messages to show.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_command(queue: str, config_path: str | None, broker_url: str | None, limit: int, as_json: bool) -> None:
    """List dead letters, with the last error from the failure records. Messages stay in the queue (they are
    briefly unacked, and come back marked redelivered)."""
    config = load(config_path, broker_url)
    with reader.connect(config, "list") as connection:
        letters = reader.peek(connection, queue, limit, config.broker.max_message_size)
        letters = reader.with_records(connection, letters)
    rows = [_summary(d) for d in letters]
    if as_json:
        output.echo_json(rows)
    elif not rows:
        click.echo(f"{queue_names(queue)[1]} is empty")
    else:
        _table(rows)


@dlq_group.command("show")
@click.argument("task_id", metavar="ID")
@click.argument("queue")
@config_options
@click.option("--all-headers", is_flag=True, help="Also the delay tiers' headers and x-death entries.")
def show_command(task_id: str, queue: str, config_path: str | None, broker_url: str | None, all_headers: bool) -> None:
    """One dead letter in full: headers, x-death, decoded body and failure record (the delay tiers' own
    headers are left out unless --all-headers)."""
    config = load(config_path, broker_url)
    with reader.connect(config, "show") as connection:
        found = [d for d in reader.peek(connection, queue, None, config.broker.max_message_size) if d.id == task_id]
        if not found:
            raise click.ClickException(f"no message with id {task_id!r} in {queue_names(queue)[1]!r}")
        letter = reader.with_records(connection, found[:1])[0]
    m = letter.decoded
    headers, deaths, hidden = _shown_headers(dict(letter.headers), all_headers)
    output.echo_json(
        {
            **_summary(letter),
            "properties": {k: v for k, v in vars(letter.properties).items() if v is not None and k != "headers"},
            "headers": headers,
            "x-death": deaths or None,
            **(
                {"hidden": f"{hidden} delay-tier headers and x-death entries (--all-headers shows them)"}
                if hidden
                else {}
            ),
            "body": {"args": list(m.args), "kwargs": dict(m.kwargs), "retries": m.retries} if m else None,
            "raw_body": letter.body.decode("utf-8", "replace") if m is None else None,
            "failure_record": letter.record,
        }
    )


@contextmanager
def _stop_on_signals() -> Iterator[list[int]]:
    """SIGINT/SIGTERM ask the replay to stop after the message in flight, instead of killing it mid-way."""
    received: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@dlq_group.command("replay")
@click.argument("queue")
@config_options
@click.option("--id", "ids", multiple=True, metavar="ID", help="Task id to replay (repeatable).")
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter.")
@click.option("--exchange", help="Send to this exchange instead of the original one.")
@click.option("--routing-key", help="Send with this routing key instead of the original one.")
@click.option("--keep-retries", is_flag=True, help="Keep each task's retry count (default: start again from 0).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (needed without a terminal).")
def replay_command(
    queue: str, config_path: str | None, broker_url: str | None, ids: tuple[str, ...], replay_all: bool,
    exchange: str | None, routing_key: str | None, keep_retries: bool, yes: bool,
) -> None:  # fmt: skip
    """Send dead letters back as fresh messages to their original exchange and routing key; each is removed
    from the DLQ only once the broker confirmed its copy. A replayed task gets its retries again (its count
    starts from 0) unless --keep-retries. Ctrl-C stops after the message in flight."""
    if bool(ids) == replay_all:
        raise click.UsageError("pass --id ID (repeatable) or --all")
    config = load(config_path, broker_url)
    dlq = queue_names(queue)[1]
    with reader.connect(config, "replay") as connection:
        total = reader.depth(connection, dlq)
        what = "every message" if replay_all else f"{len(ids)} message(s)"
        if not yes:
            _confirm(f"replay {what} of {dlq} ({total} there)?", "dlq replay")
        with _stop_on_signals() as received, click.progressbar(length=total, label="replaying", file=sys.stderr) as bar:
            result = replay.replay(
                connection, queue, ids=None if replay_all else set(ids), exchange=exchange, routing_key=routing_key,
                stop_requested=lambda: bool(received), progress=lambda letter: bar.update(1),
                reset_retries=not keep_retries,
            )  # fmt: skip
    click.echo(f"replayed {result.replayed} message(s) from {dlq}")
    if result.interrupted:
        output.error(f"interrupted: the other messages stay in {dlq}; run the command again to go on")
        sys.exit(130)
    if not replay_all and result.replayed < len(ids):
        output.error(f"{len(ids) - result.replayed} of the given ids were not found in {dlq}")
        sys.exit(1)


@dlq_group.command("purge")
@click.argument("queue")
@config_options
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def purge_command(queue: str, config_path: str | None, broker_url: str | None, yes: bool) -> None:
    """Delete every message of the dead-letter queue."""
    dlq = queue_names(queue)[1]
    with reader.connect(load(config_path, broker_url), "purge") as connection:
        total = reader.depth(connection, dlq)
        if not yes:
            _confirm(f"delete the {total} message(s) of {dlq}?", "dlq purge")
        purged = replay.purge(connection, queue)
    click.echo(f"purged {purged} message(s) from {dlq}")
