"""The project's App, built on first use from ``settings.AMQPTASKS``; tasks.py modules are then imported."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from amqptasks.app import App
from amqptasks.contrib.django.settings import SettingsError, config_from
from amqptasks.contrib.django.task import DjangoTask

_lock = threading.RLock()
_app: App | None = None


def get_app() -> App:
    """The App of this Django project (one per process), built from ``settings.AMQPTASKS`` on first use.

    Building it imports the ``tasks`` module of every installed app (Celery's autodiscovery), so a worker knows
    every task; a ``tasks.py`` that calls :func:`shared_task` while this runs gets the App being built.
    """
    global _app
    with _lock:
        if _app is not None:
            return _app
        from django.conf import settings
        from django.core.exceptions import ImproperlyConfigured

        try:
            config = config_from(getattr(settings, "AMQPTASKS", None))
        except SettingsError as exc:
            raise ImproperlyConfigured(str(exc)) from None
        app = App(config=config)
        app.task_base = DjangoTask
        _app = app
        from django.utils.module_loading import autodiscover_modules

        autodiscover_modules("tasks")
        _register_schedule(app)
        return app


def project_app() -> App:
    """The App of the Django project ``DJANGO_SETTINGS_MODULE`` names (``amqptasks worker`` without ``-A``)."""
    import django

    django.setup()
    return get_app()


def shared_task(*fns: Callable[..., Any], **options: Any) -> Any:
    """``@shared_task`` / ``@shared_task(queue=..., max_retries=...)``: a task of the project's App."""
    return get_app().task(*fns, **options)


def _register_schedule(app: App) -> None:
    """Periodic tasks from the database (the admin's), read live by ``amqptasks beat``, when the models exist."""
    from django.apps import apps

    if apps.is_installed("amqptasks.contrib.django"):
        from amqptasks.beat.sources import add_source
        from amqptasks.contrib.django.schedule import DatabaseSchedule

        add_source(app, DatabaseSchedule())


def _reset_in_child() -> None:
    # A forked child (our process pool, gunicorn --preload) must not talk on the parent's database sockets:
    # forget them without closing (closing would end the parent's session); Django reconnects on next use.
    try:
        from django.db import connections
    except ImportError:  # pragma: no cover - Django is imported by the time anything forks
        return
    for connection in connections.all(initialized_only=True):
        connection.connection = None
        connection.in_atomic_block = False
        connection.needs_rollback = False
        connection.run_on_commit = []


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_in_child)
