"""When and how a failed task runs again: in :mod:`amqptasks.tasks.retrying` (``Task.apply`` decides the same way)."""

from __future__ import annotations

from amqptasks.tasks.retrying import countdown_for, should_retry

__all__ = ["countdown_for", "should_retry"]
