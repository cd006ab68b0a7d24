"""RabbitMQ versions and what each one changes for us. Pure: no I/O.

The broker's version comes from the connection's server properties (``version``) or the management API's
overview (``rabbitmq_version``); validation without a broker knows none and is as strict as the oldest
version that could be on the other end only where that is safe (see ``config/rules.py``).

What changed, from the release notes (RabbitMQ 4.0, 4.3):
- 4.0: quorum queues take message priorities (two levels: 0-4 normal, 5+ high); a quorum queue without
  ``x-delivery-limit`` has a delivery limit of 20; queues report ``x-queue-type`` among their arguments even
  when it was not declared; a dead-lettered message routed to a stream is stored (3.x dropped it).
- 4.3: transient non-exclusive queues are denied and global QoS is rejected by default.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["QUORUM_DEFAULT_DELIVERY_LIMIT", "RabbitMQVersion"]

#: The delivery limit RabbitMQ 4.0+ applies to a quorum queue declared without x-delivery-limit.
QUORUM_DEFAULT_DELIVERY_LIMIT = 20


@dataclass(frozen=True, order=True)
class RabbitMQVersion:
    major: int
    minor: int = 0
    patch: int = 0

    @classmethod
    def parse(cls, text: object) -> RabbitMQVersion | None:
        """``"4.0.5"``, ``b"3.10.8"``, ``"4.1.0-rc.1"`` -> a version; None when *text* does not start with one."""
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        if not isinstance(text, str):
            return None
        numbers: list[int] = []
        for piece in text.strip().split(".")[:3]:
            digits = "".join(itertools.takewhile(str.isdigit, piece))
            if not digits:
                break
            numbers.append(int(digits))
            if len(digits) < len(piece):  # "5-rc" ends the version
                break
        if not numbers:
            return None
        return cls(*numbers)

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"

    @property
    def quorum_priorities(self) -> bool:
        """Quorum queues accept x-max-priority (and honour message priorities)."""
        return self.major >= 4

    @property
    def quorum_default_delivery_limit(self) -> int | None:
        """The delivery limit of a quorum queue declared without one (None: unlimited)."""
        return QUORUM_DEFAULT_DELIVERY_LIMIT if self.major >= 4 else None

    @property
    def reports_queue_type(self) -> bool:
        """Queue arguments listed by the broker include x-queue-type, declared or not."""
        return self.major >= 4

    def listed_arguments(self, declared: Mapping[str, Any]) -> dict[str, Any]:
        """The arguments the broker lists for a queue declared with *declared* (4.0+ adds the queue type)."""
        listed = dict(declared)
        if self.reports_queue_type:
            listed.setdefault("x-queue-type", "classic")
        return listed

    @property
    def dead_letters_into_streams(self) -> bool:
        """A message dead-lettered to a stream is stored (3.x drops it)."""
        return self.major >= 4

    @property
    def denies_transient_queues(self) -> bool:
        """Transient (non-durable) non-exclusive queues are refused by default."""
        return (self.major, self.minor) >= (4, 3)

    @property
    def rejects_global_qos(self) -> bool:
        return (self.major, self.minor) >= (4, 3)
