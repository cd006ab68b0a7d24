"""What every benchmark row shares: a fresh vhost, queue depth checks, latency statistics, the Markdown table."""

from __future__ import annotations

import math
import os
import platform
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata

from amqptasks.broker import BrokerURL, ManagementClient, open_blocking

#: The durable queue every row publishes to (one per fresh vhost).
QUEUE = "bench"


@dataclass(frozen=True)
class Row:
    framework: str
    mode: str
    confirmed: bool
    n: int
    seconds: float
    #: Per-call latencies in ns when calls are individual; empty for batched/pipelined rows.
    latencies_ns: Sequence[int] = ()
    #: Messages in the queue after the run (should be n).
    depth: int | None = None

    @property
    def rate(self) -> float:
        return self.n / self.seconds

    def percentile_us(self, p: float) -> float | None:
        if not self.latencies_ns:
            return None
        ordered = sorted(self.latencies_ns)
        rank = max(1, math.ceil(p / 100 * len(ordered)))  # nearest rank
        return ordered[rank - 1] / 1000


@contextmanager
def fresh_vhost(mgmt: ManagementClient, broker: BrokerURL) -> Iterator[BrokerURL]:
    """A new vhost for one row, so no row sees another's queues, connections' leftovers or messages."""
    name = f"amqptasks-bench-{uuid.uuid4().hex[:8]}"
    mgmt.create_vhost(name)
    try:
        mgmt.set_permissions(name, broker.username)
        yield broker.with_vhost(name)
    finally:
        mgmt.delete_vhost(name)


def wait_for_depth(url: BrokerURL, expected: int, timeout: float = 30.0, queue: str = QUEUE) -> int:
    """The queue depth, live (a passive declare; the management API lags by seconds), once it reaches *expected*:
    unconfirmed publishers may return with messages still in flight."""
    connection = open_blocking(url, connection_name="amqptasks bench probe")
    try:
        channel = connection.channel()
        deadline = time.monotonic() + timeout
        while True:
            depth = int(channel.queue_declare(queue, passive=True).method.message_count)
            if depth >= expected or time.monotonic() > deadline:
                return depth
            time.sleep(0.1)
    finally:
        connection.close()


def purge(url: BrokerURL, queue: str = QUEUE) -> None:
    connection = open_blocking(url, connection_name="amqptasks bench purge")
    try:
        connection.channel().queue_purge(queue)
    finally:
        connection.close()


def settle_warmup(url: BrokerURL, warmup: int) -> None:
    """Wait until every warm-up message is in the queue, then empty it, so the measured run starts at 0."""
    depth = wait_for_depth(url, warmup)
    if depth != warmup:
        raise RuntimeError(f"warm-up: the queue holds {depth} messages, expected {warmup}")
    purge(url)


def timed_calls(call: Callable[[], object], n: int) -> tuple[float, list[int]]:
    """Run *call* n times; the total seconds and each call's latency in ns."""
    latencies = [0] * n
    clock = time.perf_counter_ns
    start = clock()
    for i in range(n):
        before = clock()
        call()
        latencies[i] = clock() - before
    return (clock() - start) / 1e9, latencies


def machine(mgmt: ManagementClient, broker_host: str) -> str:
    overview = mgmt.overview()
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"{os.cpu_count()} cores ({cpu}), RabbitMQ {overview.get('rabbitmq_version')} "
        f"(Erlang {overview.get('erlang_version')}), Python {platform.python_version()}, "
        f"{', '.join(_versions('pika', 'celery', 'kombu', 'dramatiq'))}; broker at {broker_host}"
    )


def _versions(*packages: str) -> list[str]:
    found = []
    for package in packages:
        try:
            found.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            found.append(f"{package} (not installed)")
    return found


def _number(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def markdown_table(rows: Sequence[Row]) -> str:
    lines = [
        "| framework | mode | confirmed | msgs/s | p50 µs | p99 µs | queue holds n |",
        "|---|---|---|---:|---:|---:|:---:|",
    ]
    for row in rows:
        check = "✓" if row.depth == row.n else f"✗ ({row.depth})"
        lines.append(
            f"| {row.framework} | {row.mode} | {'yes' if row.confirmed else 'no'} | {_number(row.rate)} "
            f"| {_number(row.percentile_us(50))} | {_number(row.percentile_us(99))} | {check} |"
        )
    return "\n".join(lines)
