"""Watching a running system: queue depths, consumers and rates read from the management API."""

from __future__ import annotations

from amqptasks.monitor.status import QueueRow, Snapshot, build_snapshot

__all__ = ["QueueRow", "Snapshot", "build_snapshot"]
