"""Whose object is it: the user's, or one amqptasks provisions for itself (pure).

`delays: {enabled: true}` alone adds about 130 objects (32 tiers of an exchange, a queue and bindings, the exit
exchange and its bindings, the unroutable collector), and `dead_letter: auto` adds the shared dead-letter
exchange. A plan that lists each of them buries the user's own few lines, so the CLI folds amqptasks' own
objects into one line per group (``--verbose`` lists them all). The ``.dlq`` queues stay the user's: they are
named after the user's queues and hold the user's messages.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from amqptasks.constants import DELAY_TIER_PREFIX, DLX_EXCHANGE, UNROUTABLE_EXCHANGE
from amqptasks.topology.desired import BindingDecl, DesiredTopology
from amqptasks.topology.plan import Action, Change, Kind

#: amqptasks' own groups of objects, in the order they are shown, with how a user would call them.
GROUPS = {
    "delays": f"delay tiers {DELAY_TIER_PREFIX}*",
    "dlx": f"dead-letter exchange {DLX_EXCHANGE}",
    "unroutable": f"unroutable collector {UNROUTABLE_EXCHANGE}",
}
_KINDS: tuple[Kind, ...] = ("exchange", "queue", "binding")


def group_of(kind: Kind, name: str, source: str | None = None) -> str | None:
    """The key in :data:`GROUPS` of an object amqptasks provisions for itself, None for the user's own.

    A binding belongs to the group of its source exchange (the DLX's bindings to the ``.dlq`` queues, the exit
    exchange's bindings to the user's queues and exchanges are wiring of those mechanisms).
    """
    owner = source if kind == "binding" and source is not None else name
    if owner.startswith(DELAY_TIER_PREFIX):
        return "delays"
    if owner == DLX_EXCHANGE:
        return "dlx"
    if owner == UNROUTABLE_EXCHANGE:
        return "unroutable"
    return None


def change_group(change: Change) -> str | None:
    source = change.decl.source if isinstance(change.decl, BindingDecl) else None
    return group_of(change.kind, change.name, source)


def count_text(counts: Counter[Kind]) -> str:
    """'33 exchanges, 32 queues, 1 binding' (kinds with none are left out)."""
    return ", ".join(_plural(counts[k], k) for k in _KINDS if counts[k])


def _plural(n: int, kind: Kind) -> str:
    return f"{n} {kind}" if n == 1 else f"{n} {kind}s"


@dataclass(frozen=True)
class Folded:
    """Several changes to amqptasks' own objects, shown as one line."""

    action: Action
    group: str
    counts: Counter[Kind]

    def describe(self) -> str:
        return f"{GROUPS[self.group]}: {count_text(self.counts)}"


def fold(changes: Sequence[Change]) -> list[Change | Folded]:
    """The user's changes as they are, then one :class:`Folded` line per (group, action).

    Conflicts are never folded: each says which value differs and where.
    """
    shown: list[Change | Folded] = []
    folded: dict[tuple[str, Action], Counter[Kind]] = {}
    for change in changes:
        group = change_group(change)
        if group is None or change.action == "conflict":
            shown.append(change)
        else:
            folded.setdefault((group, change.action), Counter())[change.kind] += 1
    order = list(GROUPS)
    for (group, action), counts in sorted(folded.items(), key=lambda item: order.index(item[0][0])):
        shown.append(Folded(action, group, counts))
    return shown


def split_counts(desired: DesiredTopology) -> tuple[Counter[Kind], Counter[Kind]]:
    """(the user's objects, amqptasks' own objects) of a desired topology, by kind."""
    yours: Counter[Kind] = Counter()
    ours: Counter[Kind] = Counter()
    objects: Iterable[tuple[Kind, str, str | None]] = [
        *(("exchange", e.name, None) for e in desired.exchanges),
        *(("queue", q.name, None) for q in desired.queues),
        *(("binding", b.destination, b.source) for b in desired.bindings),
    ]
    for kind, name, source in objects:
        (ours if group_of(kind, name, source) else yours)[kind] += 1
    return yours, ours
