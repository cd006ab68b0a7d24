"""The task ids a worker was told to revoke: in memory, bounded, each forgotten after a while (pure)."""

from __future__ import annotations

import time
from collections import OrderedDict

#: As Celery: at most this many ids, each kept this long after it was revoked. Workers also read the revocations
#: of the last REVOKED_TTL back from the broker when they start (control/stored.py).
MAX_REVOKED = 50_000
REVOKED_TTL = 3 * 3600.0


class RevokedIds:
    def __init__(self, maximum: int = MAX_REVOKED, ttl: float = REVOKED_TTL) -> None:
        self.maximum, self.ttl = maximum, ttl
        self._expiry: OrderedDict[str, float] = OrderedDict()

    def add(self, task_id: str, at: float | None = None) -> bool:
        """Remember *task_id*, revoked at wall-clock time *at* (default: now) and kept for ``ttl`` from then.

        False when it is older than that already (a stored revocation read back too late): nothing is added.
        """
        remaining = self.ttl if at is None else self.ttl - (time.time() - at)
        if remaining <= 0:
            return False
        # The same revocation may come twice (broadcast, then read back from the stream): keep the later expiry.
        expiry = max(time.monotonic() + remaining, self._expiry.pop(task_id, 0.0))
        self._expiry[task_id] = expiry
        self._prune()
        return True

    def __contains__(self, task_id: object) -> bool:
        if not isinstance(task_id, str):
            return False
        self._prune()
        expiry = self._expiry.get(task_id)
        return expiry is not None and expiry > time.monotonic()

    def ids(self) -> list[str]:
        """The ids revoked now, oldest first."""
        self._prune()
        now = time.monotonic()
        return [task_id for task_id, expiry in self._expiry.items() if expiry > now]

    def __len__(self) -> int:
        self._prune()
        return len(self._expiry)

    def _prune(self) -> None:
        now = time.monotonic()
        # Insertion order is nearly expiry order (stored revocations are read back oldest first, broadcasts get
        # the full ttl), so the oldest are at the front; __contains__ checks the expiry of the id itself.
        while self._expiry and (len(self._expiry) > self.maximum or next(iter(self._expiry.values())) <= now):
            self._expiry.popitem(last=False)
