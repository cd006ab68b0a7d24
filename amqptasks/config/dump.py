"""The effective configuration as plain data, with every secret masked (for ``config show``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from amqptasks.broker.url import mask_url
from amqptasks.config.convert import public_fields


def as_plain(obj: Any, *, mask: bool = True) -> Any:
    """Dataclasses → dicts (every field, defaults included). Fields marked ``secret`` are masked.

    Only values are touched: file paths (TLS keys) are shown as paths, their contents never read.
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        for f in public_fields(type(obj)):
            value = as_plain(getattr(obj, f.name), mask=mask)
            if mask and f.metadata.get("secret") and isinstance(value, str) and "://" in value:
                value = mask_url(value)
            out[f.name] = value
        return out
    if isinstance(obj, Mapping):
        return {str(k): as_plain(v, mask=mask) for k, v in obj.items()}
    if isinstance(obj, tuple | list):
        return [as_plain(v, mask=mask) for v in obj]
    return obj
