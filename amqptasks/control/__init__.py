"""Broadcast control: ask or tell every running worker (``amqptasks inspect``, ``amqptasks control``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from amqptasks.control import client
from amqptasks.control.client import broadcast, rate_limit

if TYPE_CHECKING:
    from amqptasks.app import App

__all__ = ["broadcast", "rate_limit", "revoke"]


def revoke(app: App, task_id: str, terminate: bool = False, *, timeout: float = 1.0) -> list[dict[str, Any]]:
    """Revoke *task_id* in every running worker; their replies (see :func:`client.revoke`)."""
    return client.revoke(app.config, task_id, terminate=terminate, timeout=timeout)
