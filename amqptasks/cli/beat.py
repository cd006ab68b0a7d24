"""``amqptasks beat -A pkg.module:app`` — send the app's periodic tasks (one active beat per vhost)."""

from __future__ import annotations

import signal
from typing import Any

import click

from amqptasks.cli.worker import APP_HELP, BROKER_HELP, load_app


@click.command("beat")
@click.option("-A", "--app", "app_spec", help=APP_HELP)
@click.option("--broker", "broker_url", metavar="URL", help=BROKER_HELP)
@click.option("-l", "--loglevel", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False))  # fmt: skip
def beat_command(app_spec: str | None, broker_url: str | None, loglevel: str) -> None:
    """Send periodic tasks (beat.entries in the YAML, amqptasks.beat.periodic() in code).

    Start several for availability: one leads, the others stand by and take over within about a second.
    """
    from amqptasks.beat.scheduler import Scheduler, banner
    from amqptasks.worker.runner import setup_logging

    app = load_app(app_spec, broker_url)
    setup_logging(loglevel, "text")
    scheduler = Scheduler(app)
    click.echo(banner(scheduler), err=True)

    def on_signal(_signum: int, _frame: Any) -> None:
        scheduler.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        scheduler.run()
    finally:
        app.close()
