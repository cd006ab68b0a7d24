"""The task ids a worker was told to revoke: in memory, bounded, each forgotten after a while (pure)."""

from __future__ import annotations

import time
from collections import OrderedDict

#: As Celery: at most this many ids, each kept this long (a revoked task still queued or delayed past it runs).
MAX_REVOKED = 50_000
REVOKED_TTL = 3 * 3600.0


class RevokedIds:
    def __init__(self, maximum: int = MAX_REVOKED, ttl: float = REVOKED_TTL) -> None:
        self.maximum, self.ttl = maximum, ttl
        self._expiry: OrderedDict[str, float] = OrderedDict()

    def add(self, task_id: str) -> None:
        self._expiry.pop(task_id, None)
        self._expiry[task_id] = time.monotonic() + self.ttl
        self._prune()

    def __contains__(self, task_id: object) -> bool:
        self._prune()
        return task_id in self._expiry

    def __len__(self) -> int:
        self._prune()
        return len(self._expiry)

    def _prune(self) -> None:
        now = time.monotonic()
        # Insertion order is expiry order (one ttl for all), so the oldest are at the front.
        while self._expiry and (len(self._expiry) > self.maximum or next(iter(self._expiry.values())) <= now):
            self._expiry.popitem(last=False)
