"""Command-line options + a YAML worker profile → the worker's settings (pure)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from amqptasks.config.model import Config
from amqptasks.errors import AmqpTasksError
from amqptasks.worker.consumer import WorkerSettings
from amqptasks.worker.names import expand_hostname

DEFAULTS: dict[str, Any] = {"concurrency": 8, "pool": "threads", "grace": 30.0, "max_redeliveries": 5}


def default_processes(pool: str, metrics_port: int | None) -> int:
    """One consuming process per core: one Python process runs on one core at a time (the GIL), and the
    consuming side (AMQP frames, decoding, settling) is most of a short task's cost. One process only where
    more would be wrong or wasted: ``--pool processes`` (its children use the cores) and ``--metrics-port``
    (one port serves one process)."""
    if pool == "processes" or metrics_port is not None:
        return 1
    return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Plan:
    settings: WorkerSettings
    pool: str
    processes: int


def plan_worker(config: Config, queues: list[str], profile: str | None, options: dict[str, Any]) -> Plan:
    """Options given on the command line win over the profile's, which win over the defaults."""
    chosen: dict[str, Any] = {}
    if profile is not None:
        if profile not in config.workers:
            known = ", ".join(sorted(config.workers)) or "none"
            raise AmqpTasksError(f"no worker profile {profile!r} in the YAML (profiles: {known})")
        p = config.workers[profile]
        chosen = {
            "concurrency": p.concurrency, "prefetch": p.prefetch, "pool": p.pool, "processes": p.processes,
            "max_tasks_per_child": p.max_tasks_per_child, "grace": p.grace, "max_redeliveries": p.max_redeliveries,
        }  # fmt: skip
        queues = queues or list(p.queues)
    if not queues:
        raise AmqpTasksError("no queues to consume: give -Q billing,emails or --profile NAME")

    def pick(name: str) -> Any:
        for source in (options, chosen, DEFAULTS):
            if source.get(name) is not None:
                return source[name]
        return None

    pool, max_tasks_per_child = pick("pool"), pick("max_tasks_per_child")
    if max_tasks_per_child is not None and pool != "processes":
        raise AmqpTasksError(
            f"max tasks per child {max_tasks_per_child} needs --pool processes (the pool is {pool!r}, where "
            "nothing is recycled): add --pool processes, or drop --max-tasks-per-child / the profile's "
            "max_tasks_per_child"
        )
    settings = WorkerSettings(
        queues=queues,
        concurrency=pick("concurrency"),
        prefetch=pick("prefetch"),
        burst=bool(options.get("burst")),
        grace=pick("grace"),
        pool=pool,
        max_tasks_per_child=max_tasks_per_child,
        max_redeliveries=pick("max_redeliveries"),
        metrics_port=options.get("metrics_port"),
        events=bool(options.get("events")),
    )
    if options.get("hostname"):
        settings.hostname = expand_hostname(options["hostname"])
    processes = pick("processes") or default_processes(pool, settings.metrics_port)
    if settings.metrics_port and processes > 1:  # 0 (any free port) works in every process
        raise AmqpTasksError("--metrics-port serves one process: run one worker per port instead of --processes")
    return Plan(settings, pool, processes)
