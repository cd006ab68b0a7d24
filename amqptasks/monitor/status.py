"""Queue status rows from management API JSON. Pure: no I/O, so it is tested with sample answers.

Input is what ``GET /api/queues/{vhost}`` and ``GET /api/bindings/{vhost}`` return; output is one row per queue
with its depths, consumers, rates, dead-letter queue depth and flags a human should look at.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from amqptasks.constants import DELAY_TIER_PREFIX, UNROUTABLE_EXCHANGE, dlq_name

__all__ = ["FLAG_MISSING", "FLAG_NO_CONSUMERS", "QueueRow", "Snapshot", "build_snapshot"]

FLAG_NO_CONSUMERS = "NO CONSUMERS"
FLAG_MISSING = "MISSING"


@dataclass(frozen=True)
class QueueRow:
    """One queue as a user sees it. Rates are msg/s, None when the broker has no stats (yet) for them."""

    queue: str
    ready: int
    unacked: int
    consumers: int
    publish_rate: float | None
    deliver_rate: float | None
    dlq: str | None
    dlq_depth: int | None
    flags: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["flags"] = list(self.flags)
        return data


@dataclass(frozen=True)
class Snapshot:
    rows: tuple[QueueRow, ...]
    #: Messages waiting in the ``amqptasks.delay.*`` tier queues.
    delayed: int
    #: Depth of the ``amqptasks.unroutable`` queue: delayed messages nothing could route when they fell due.
    unroutable: int


def build_snapshot(
    queues: Sequence[Mapping[str, Any]],
    bindings: Sequence[Mapping[str, Any]] = (),
    *,
    declared: Sequence[str] | None = None,
) -> Snapshot:
    """Rows for *declared* queue names (in that order), or for every queue of the vhost when it is None.

    The delay tier queues are internal: they only appear when every queue is asked for.
    """
    by_name = {str(q["name"]): q for q in queues}
    if declared is None:
        names = sorted(by_name)
    else:
        names = list(dict.fromkeys(n for n in declared if not n.startswith(DELAY_TIER_PREFIX)))
    rows = tuple(_row(name, by_name, bindings) for name in names)
    delayed = sum(_depth(q) for name, q in by_name.items() if name.startswith(DELAY_TIER_PREFIX))
    unroutable = _depth(by_name[UNROUTABLE_EXCHANGE]) if UNROUTABLE_EXCHANGE in by_name else 0
    return Snapshot(rows, delayed, unroutable)


def _row(name: str, by_name: Mapping[str, Mapping[str, Any]], bindings: Sequence[Mapping[str, Any]]) -> QueueRow:
    queue = by_name.get(name)
    dlq = _dead_letter_queue(name, queue, by_name, bindings)
    dlq_depth = _depth(by_name[dlq]) if dlq is not None else None
    if queue is None:
        return QueueRow(name, 0, 0, 0, None, None, dlq, dlq_depth, (FLAG_MISSING,))
    ready, unacked = _int(queue, "messages_ready"), _int(queue, "messages_unacknowledged")
    consumers = _int(queue, "consumers")
    flags = (FLAG_NO_CONSUMERS,) if ready + unacked > 0 and consumers == 0 else ()
    stats = queue.get("message_stats") or {}
    return QueueRow(
        queue=name,
        ready=ready,
        unacked=unacked,
        consumers=consumers,
        publish_rate=_rate(stats, "publish_details"),
        deliver_rate=_rate(stats, "deliver_get_details"),
        dlq=dlq,
        dlq_depth=dlq_depth,
        flags=flags,
    )


def _dead_letter_queue(
    name: str,
    queue: Mapping[str, Any] | None,
    by_name: Mapping[str, Mapping[str, Any]],
    bindings: Sequence[Mapping[str, Any]],
) -> str | None:
    """``<queue>.dlq`` when it exists, else the one queue its dead-letter exchange routes its dead letters to."""
    if dlq_name(name) in by_name:
        return dlq_name(name)
    arguments = (queue or {}).get("arguments") or {}
    exchange, key = arguments.get("x-dead-letter-exchange"), arguments.get("x-dead-letter-routing-key")
    if not exchange or key is None:
        # Without a dead-letter routing key, each message keeps its own: no single queue to name.
        return None
    targets = {
        str(b["destination"])
        for b in bindings
        if b.get("source") == exchange and b.get("destination_type") == "queue" and b.get("routing_key") == key
    }
    if len(targets) == 1:
        (target,) = targets
        return target if target in by_name else None
    return None


def _depth(queue: Mapping[str, Any]) -> int:
    # Right after a queue is declared the stats database may not list its counters yet: read them as 0.
    return _int(queue, "messages_ready") + _int(queue, "messages_unacknowledged")


def _int(data: Mapping[str, Any], key: str) -> int:
    value = data.get(key)
    return int(value) if isinstance(value, (int, float)) else 0


def _rate(stats: Mapping[str, Any], key: str) -> float | None:
    details = stats.get(key)
    if not isinstance(details, Mapping):
        return None
    rate = details.get("rate")
    return float(rate) if isinstance(rate, (int, float)) else None
