"""``amqptasks worker -A pkg.module:app -Q billing,emails`` — parse options, then run the worker."""

from __future__ import annotations

import importlib
import logging
import os
import sys
import traceback
from typing import Any

import click

from amqptasks.app import App
from amqptasks.constants import ENV_BROKER_URL
from amqptasks.errors import AmqpTasksError


def load_app(spec: str | None, broker_url: str | None = None) -> App:
    """The app ``-A`` names; without ``-A``, the Django project's when ``DJANGO_SETTINGS_MODULE`` is set.

    *broker_url* (``--broker``) is set as ``AMQPTASKS_BROKER_URL`` before the app's module is imported, so it
    overrides the YAML's broker as on every other command (and reaches forked worker processes).
    """
    if broker_url:
        os.environ[ENV_BROKER_URL] = broker_url
    app = _import_app(spec)
    if broker_url and app.config.broker.url != broker_url:
        raise click.UsageError(
            f"--broker: the app {spec or '(Django project)'} sets its broker in code (App(broker_url=...)), which "
            f"{ENV_BROKER_URL} and --broker cannot override; remove it from the code or drop --broker"
        )
    return app


BROKER_HELP = "Broker URL (vhost included); overrides the YAML and AMQPTASKS_BROKER_URL."


def _import_app(spec: str | None) -> App:
    """The App named by ``-A MODULE:ATTRIBUTE`` (``-A MODULE`` means ``MODULE:app``), or a UsageError saying
    what was found instead and how to write the option."""
    if not spec:
        return _django_app()
    module_name, colon, attribute = spec.partition(":")
    if not module_name or (colon and not attribute):
        raise click.BadParameter(f"{spec!r}: write it as MODULE:ATTRIBUTE, e.g. -A tasks:app", param_hint="-A")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.BadParameter(f"cannot import {module_name!r}: {exc}", param_hint="-A") from None
    except AmqpTasksError:
        raise  # e.g. the app's YAML is invalid: its own message says where
    except Exception as exc:  # a bug in the user's module: say where, without amqptasks' frames around it
        raise click.BadParameter(
            f"importing {module_name!r} raised {type(exc).__name__}: {exc}{_where(exc)}", param_hint="-A"
        ) from None
    apps = sorted(name for name, value in vars(module).items() if isinstance(value, App))
    found = f"it defines {', '.join(apps)}, so write -A {module_name}:{apps[0]}" if apps else "it defines no App"
    name = attribute or "app"
    if not hasattr(module, name):
        if not attribute:
            raise click.BadParameter(
                f"module {module_name!r} has no attribute 'app' ({found}); -A takes MODULE:ATTRIBUTE, "
                "the ATTRIBUTE being the App object (MODULE alone means MODULE:app)",
                param_hint="-A",
            )
        raise click.BadParameter(f"module {module_name!r} has no attribute {name!r} ({found})", param_hint="-A")
    app = getattr(module, name)
    if not isinstance(app, App):
        kind = type(app).__name__
        raise click.BadParameter(f"{module_name}:{name} is a {kind}, not an amqptasks App ({found})", param_hint="-A")
    return app


def _where(exc: BaseException) -> str:
    """' (at FILE:LINE)' of the innermost frame of the user's code (a SyntaxError says where itself)."""
    if isinstance(exc, SyntaxError):
        return ""
    ours = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if "importlib" not in f.filename and not os.path.abspath(f.filename).startswith(ours + os.sep)
    ]
    return f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""


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
@click.option("--broker", "broker_url", metavar="URL", help=BROKER_HELP)
@click.option("-Q", "--queues", help="Comma-separated queues to consume.")
@click.option("--profile", help="A named setup from the YAML's workers: section.")
@click.option("-c", "--concurrency", type=click.IntRange(min=1), help="Tasks run at once per process [8].")
@click.option("--prefetch", type=click.IntRange(min=1), help="Messages prefetched per process [concurrency x 32].")
@click.option("--pool", type=click.Choice(["asyncio", "threads", "processes"]), help="Where sync tasks run [threads].")
@click.option("--processes", type=click.IntRange(min=1),
              help="Consuming processes [one per core; 1 with --pool processes or --metrics-port].")  # fmt: skip
@click.option("--max-tasks-per-child", type=click.IntRange(min=1), help="Recycle pool children after N tasks.")
@click.option("--max-redeliveries", type=click.IntRange(min=0),
              help="Runs more for a task that killed its worker, then the DLQ [5].")  # fmt: skip
@click.option("--grace", type=click.FloatRange(min=0), help="Warm shutdown: seconds for running tasks [30].")
@click.option("--burst", is_flag=True, help="Drain the queues, then exit 0.")
@click.option(
    "-n", "--hostname", help="Worker name, as Celery's: %h host, %n its first label, %d domain [amqptasks@HOST]."
)
@click.option("--beat", "embed_beat", is_flag=True, help="Also run the periodic-task scheduler (beat) here.")
@click.option("--metrics-port", type=click.IntRange(min=0), help="Serve Prometheus metrics on this port.")
@click.option("--events", is_flag=True, help="Publish Celery-format events on celeryev (for celery events, Flower).")
@click.option("-l", "--loglevel", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False))  # fmt: skip
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--log-tasks", is_flag=True,
              help="Log each task's received/started/succeeded lines (off by default: they halve the throughput "
              "of short tasks; failures, retries and dead-letters are always logged).")  # fmt: skip
def worker_command(
    app_spec: str | None, broker_url: str | None, queues: str | None, profile: str | None, embed_beat: bool,
    **options: Any,
) -> None:  # fmt: skip
    """Consume queues and run their tasks: ack after success, retry, or dead-letter."""
    from amqptasks.worker.runner import banner, serve, serve_many, setup_logging
    from amqptasks.worker.setup import plan_worker

    app = load_app(app_spec, broker_url)
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
