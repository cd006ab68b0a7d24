"""The admin of the database schedule."""

from __future__ import annotations

from django.contrib import admin

from amqptasks.contrib.django.models import PeriodicTask


@admin.register(PeriodicTask)
class PeriodicTaskAdmin(admin.ModelAdmin):  # type: ignore[misc]  # Django ships no type information
    list_display = ("name", "task", "every", "cron", "timezone", "enabled", "queue", "last_run_at")
    list_filter = ("enabled", "queue")
    search_fields = ("name", "task")
    readonly_fields = ("last_run_at", "updated_at")
