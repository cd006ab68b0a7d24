"""``amqptasks worker -A pkg.module:app -Q billing,emails`` — parse options, then run the worker."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Any

import click

from amqptasks.app import App


def load_app(spec: str | None) -> App:
    """The app ``-A`` names; without ``-A``, the Django project's when ``DJANGO_SETTINGS_MODULE`` is set."""
    if not spec:
        return _django_app()
    module_name, _, attribute = spec.partition(":")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.BadParameter(f"cannot import {module_name!r}: {exc}", param_hint="-A") from None
    app = getattr(module, attribute or "app", None)
    if not isinstance(app, App):
        raise click.BadParameter(f"{module_name}:{attribute or 'app'} is not an amqptasks App", param_hint="-A")
    return app


def _django_app() -> App:
    settings_module = os.environ.get("DJANGO_SETTINGS_MODULE")
    if not settings_module:
        raise click.UsageError(
            "no app given: pass -A pkg.module:app (or set DJANGO_SETTINGS_MODULE for a Django project)"
        )
    sys.path.insert(0, os.getcwd())
    try:
        from django.core.exceptions import ImproperlyConfigured

        from amqptasks.contrib.django.app import project_app
    except ImportError as exc:
        raise click.UsageError(
            f"DJANGO_SETTINGS_MODULE is set but Django cannot be imported ({exc}): pip install 'amqptasks[django]'"
        ) from None
    try:
        return project_app()
    except (ImportError, ImproperlyConfigured) as exc:
        raise click.UsageError(f"cannot load the Django project of {settings_module!r}: {exc}") from None


APP_HELP = "The app: pkg.module:app [the Django project's, when DJANGO_SETTINGS_MODULE is set]"


@click.command("worker")
@click.option("-A", "--app", "app_spec", help=APP_HELP)
@click.option("-Q", "--queues", help="Comma-separated queues to consume.")
@click.option("--profile", help="A named setup from the YAML's workers: section.")
@click.option("-c", "--concurrency", type=click.IntRange(min=1), help="Tasks run at once per process [8].")
@click.option("--prefetch", type=click.IntRange(min=1), help="Messages prefetched per process [concurrency x 16].")
@click.option("--pool", type=click.Choice(["asyncio", "threads", "processes"]), help="Where sync tasks run [threads].")
@click.option("--processes", type=click.IntRange(min=1),
              help="Consuming processes [one per core; 1 with --pool processes or --metrics-port].")  # fmt: skip
@click.option("--max-tasks-per-child", type=click.IntRange(min=1), help="Recycle pool children after N tasks.")
@click.option("--grace", type=click.FloatRange(min=0), help="Warm shutdown: seconds for running tasks [30].")
@click.option("--burst", is_flag=True, help="Drain the queues, then exit 0.")
@click.option("-n", "--hostname", help="Worker name [amqptasks@HOST].")
@click.option("--beat", "embed_beat", is_flag=True, help="Also run the periodic-task scheduler (beat) here.")
@click.option("--metrics-port", type=click.IntRange(min=0), help="Serve Prometheus metrics on this port.")
@click.option("--events", is_flag=True, help="Publish task events to the amqptasks.events exchange.")
@click.option("-l", "--loglevel", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False))  # fmt: skip
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--log-tasks", is_flag=True,
              help="Log each task's received/started/succeeded lines (off by default: they halve the throughput "
              "of short tasks; failures, retries and dead-letters are always logged).")  # fmt: skip
def worker_command(
    app_spec: str | None, queues: str | None, profile: str | None, embed_beat: bool, **options: Any
) -> None:
    """Consume queues and run their tasks: ack after success, retry, or dead-letter."""
    from amqptasks.worker.runner import banner, serve, serve_many, setup_logging
    from amqptasks.worker.setup import plan_worker

    app = load_app(app_spec)
    log_format = options.pop("log_format")
    setup_logging(options.pop("loglevel"), log_format, log_tasks=options.pop("log_tasks"))
    plan = plan_worker(app.config, [q for q in (queues or "").split(",") if q], profile, options)
    text = banner(app, plan.settings, plan.pool, plan.processes)
    if log_format == "json":  # every line a JSON object, the banner too
        logging.getLogger("amqptasks.worker").info(text, extra={"task_event": "banner"})
    else:
        click.echo(text, err=True)
    if plan.processes > 1:
        sys.exit(serve_many(app, plan.settings, plan.processes, beat=embed_beat))
    serve(app, plan.settings, beat=embed_beat)
