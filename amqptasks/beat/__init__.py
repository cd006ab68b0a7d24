"""Periodic tasks: entries and run times (schedule), the one-leader-per-vhost lock (lock), the loop (scheduler)."""

from amqptasks.beat.schedule import Entry, crontab, entries_of, periodic, task_id

__all__ = ["Entry", "crontab", "entries_of", "periodic", "task_id"]
