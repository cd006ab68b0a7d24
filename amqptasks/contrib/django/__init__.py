"""amqptasks inside a Django project.

Add ``"amqptasks.contrib.django"`` to ``INSTALLED_APPS`` and configure it under one setting::

    AMQPTASKS = {
        "CONFIG": BASE_DIR / "amqptasks.yaml",  # the YAML (or $AMQPTASKS_CONFIG); none: an empty configuration
        "BROKER_URL": "amqp://guest:guest@localhost:5672/%2F",  # $AMQPTASKS_BROKER_URL wins over it
        "OVERRIDES": {"results": {"backend": "redis://localhost:6379/0"}},  # YAML keys over the file's
    }

Then declare tasks in the ``tasks.py`` module of any installed app with :func:`shared_task` (Celery's name)::

    from amqptasks.contrib.django import shared_task

    @shared_task(queue="emails")
    def send_welcome(user_id: int) -> None: ...

The App is built on first use (:func:`get_app`), after Django's settings are ready, and then imports every
installed app's ``tasks`` module, so a worker started with ``DJANGO_SETTINGS_MODULE`` set (``amqptasks worker -Q
emails``, no ``-A``) knows every task. Tasks are :class:`~amqptasks.contrib.django.task.DjangoTask` objects:
``delay_on_commit()``/``apply_async_on_commit()`` publish when the surrounding transaction commits, and each run
closes the database connections Django considers stale before and after it, as a request does.
"""

from __future__ import annotations

from amqptasks.contrib.django.app import get_app, shared_task
from amqptasks.contrib.django.task import DjangoTask

__all__ = ["DjangoTask", "get_app", "shared_task"]
