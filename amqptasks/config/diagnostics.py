"""Where something is in a YAML file, and what is wrong with it."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True, order=True)
class Location:
    file: str
    line: int  # 1-based
    col: int  # 1-based

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


#: Location of objects built in code rather than read from a file.
NOWHERE = Location("<code>", 0, 0)


@dataclass(frozen=True)
class Diagnostic:
    loc: Location
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{self.loc}: {prefix}{self.message}"

    def as_dict(self) -> dict[str, object]:
        return {
            "file": self.loc.file,
            "line": self.loc.line,
            "column": self.loc.col,
            "severity": self.severity,
            "message": self.message,
        }


@dataclass
class Diagnostics:
    """Collects every problem so that all of them are reported at once."""

    items: list[Diagnostic] = field(default_factory=list)

    def error(self, loc: Location, message: str) -> None:
        self.items.append(Diagnostic(loc, message, "error"))

    def warning(self, loc: Location, message: str) -> None:
        self.items.append(Diagnostic(loc, message, "warning"))

    @property
    def errors(self) -> list[Diagnostic]:
        return sorted((d for d in self.items if d.severity == "error"), key=lambda d: d.loc)

    @property
    def warnings(self) -> list[Diagnostic]:
        return sorted((d for d in self.items if d.severity == "warning"), key=lambda d: d.loc)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` when a choice is close to *word*, else an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
