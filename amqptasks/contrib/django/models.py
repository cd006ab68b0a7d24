"""Periodic tasks kept in the database, editable in the Django admin and read live by ``amqptasks beat``."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import models


class PeriodicTask(models.Model):  # type: ignore[misc]  # Django ships no type information
    """One periodic task: the task's name, when (an interval or a cron expression), and what to send."""

    name = models.CharField(max_length=200, unique=True, help_text="Unique; the run ids are beat:<name>:<time>.")
    task = models.CharField(max_length=200, help_text="The registered task name, e.g. shop.tasks.cleanup.")
    every = models.FloatField(null=True, blank=True, help_text="Interval in seconds (or give a cron expression).")
    cron = models.CharField(
        max_length=100, blank=True, default="", help_text="minute hour day-of-month month day-of-week"
    )
    timezone = models.CharField(max_length=64, default="UTC", help_text="IANA zone the cron expression is read in.")
    enabled = models.BooleanField(default=True)
    args = models.JSONField(default=list, blank=True, help_text="A JSON list of positional arguments.")
    kwargs = models.JSONField(default=dict, blank=True, help_text="A JSON object of keyword arguments.")
    queue = models.CharField(max_length=200, blank=True, default="", help_text="Empty: the task's own routing.")
    priority = models.PositiveSmallIntegerField(null=True, blank=True)
    last_run_at = models.DateTimeField(null=True, blank=True, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        app_label = "amqptasks"
        ordering = ("name",)

    def __str__(self) -> str:
        return str(self.name)

    def clean(self) -> None:
        from amqptasks.contrib.django.schedule import entry_of

        try:
            entry_of(self)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None

    def save(self, *args: Any, **kwargs: Any) -> None:
        self.full_clean(exclude=["last_run_at"])
        super().save(*args, **kwargs)
