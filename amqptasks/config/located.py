"""Base of every model object read from YAML: where it and each of its fields were written."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from amqptasks.config.diagnostics import NOWHERE, Location


@dataclass(frozen=True, kw_only=True)
class Located:
    """Base of model objects read from YAML: where the object and each of its fields were written."""

    loc: Location = field(default=NOWHERE, compare=False, repr=False, metadata={"internal": True})
    field_locs: Mapping[str, Location] = field(
        default_factory=dict, compare=False, repr=False, metadata={"internal": True}
    )

    def where(self, name: str) -> Location:
        return self.field_locs.get(name, self.loc)
