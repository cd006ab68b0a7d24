"""The Django app config: nothing is built at start-up (the App is built by :func:`get_app` on first use)."""

from __future__ import annotations

from django.apps import AppConfig


class AmqptasksConfig(AppConfig):  # type: ignore[misc]  # Django ships no type information
    name = "amqptasks.contrib.django"
    label = "amqptasks"
    verbose_name = "amqptasks"
    default_auto_field = "django.db.models.BigAutoField"
