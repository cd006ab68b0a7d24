"""Task ids: random (version 4) UUIDs as strings, like Celery's, made without building a ``uuid.UUID``."""

from __future__ import annotations

import os

_VERSION_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_VERSION_SET = (0x4000 << 64) | (0x8000 << 48)  # version 4, RFC 4122 variant


def new_id() -> str:
    """``str(uuid.uuid4())`` at about half the cost (it is on the per-message publish path)."""
    n = int.from_bytes(os.urandom(16)) & _VERSION_CLEAR | _VERSION_SET
    h = f"{n:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
