"""What a worker answers to each remote-control command, in the shapes Celery's workers reply with
(celery/worker/control.py), so ``celery inspect``, ``celery status`` and Flower read our workers as theirs.

Inspect commands reply bare (a list, a dict); control commands reply ``{"ok": text}`` or ``{"error": text}``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from amqptasks.broker.url import BrokerURL
from amqptasks.tasks.options import parse_rate
from amqptasks.worker.events import RateLimits

if TYPE_CHECKING:
    from amqptasks.control.worker import WorkerControl
    from amqptasks.worker.delivery import Delivery

log = logging.getLogger("amqptasks.worker")

Handler = Callable[..., Awaitable[Any]]


def ok(value: Any) -> dict[str, Any]:
    return {"ok": value}


def nok(value: Any) -> dict[str, Any]:
    return {"error": value}


def request_info(d: Delivery, hostname: str) -> dict[str, Any]:
    """Celery's ``Request.info()`` of a delivery, and where it came from."""
    m = d.message
    started = time.time() - (time.monotonic() - d.started) if d.started is not None else None
    return {
        "id": m.id if m else d.raw.correlation_id, "name": m.task if m else None,
        "args": list(m.args) if m else [], "kwargs": dict(m.kwargs) if m else {},
        "type": m.task if m else None, "hostname": hostname, "time_start": started,
        "acknowledged": d.settled == "ack", "worker_pid": os.getpid(),
        "delivery_info": {"exchange": d.exchange, "routing_key": d.raw.routing_key, "priority": d.raw.priority,
                          "redelivered": bool(d.raw.redelivered)},
        "queue": d.queue, "running_for": round(time.monotonic() - (d.started or d.received), 3),
    }  # fmt: skip


def _broker_info(url: str) -> dict[str, Any]:
    broker = BrokerURL.parse(url)
    return {"hostname": broker.host, "port": broker.port, "userid": broker.username, "virtual_host": broker.vhost,
            "transport": "amqp", "ssl": broker.scheme == "amqps"}  # fmt: skip


class Commands:
    """The handlers of one worker, by Celery's command names."""

    def __init__(self, control: WorkerControl) -> None:
        self.control = control
        self.worker = control.worker

    def find(self, method: str) -> Handler | None:
        return getattr(self, f"do_{method}", None) if method.isidentifier() else None

    # --- inspect ----------------------------------------------------------------------------------------------

    async def do_ping(self, **_: Any) -> dict[str, Any]:
        return ok("pong")

    async def do_registered(self, **_: Any) -> list[str]:
        return sorted(self.worker.app.tasks)

    async def do_active(self, safe: bool = False, **_: Any) -> list[dict[str, Any]]:
        hostname = self.worker.settings.hostname
        return [request_info(d, hostname) for d, _task in list(self.worker.active.values())]

    async def do_reserved(self, **_: Any) -> list[dict[str, Any]]:
        # Prefetched messages wait in the transport's buffer, not as requests: nothing is reserved in Celery's sense.
        return []

    async def do_scheduled(self, **_: Any) -> list[dict[str, Any]]:
        # A countdown/eta waits in the broker's delay tiers, never in worker memory.
        return []

    async def do_revoked(self, **_: Any) -> list[str]:
        return self.control.revoked.ids()

    async def do_stats(self, **_: Any) -> dict[str, Any]:
        s, w = self.worker.settings, self.worker
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "pid": os.getpid(), "ppid": os.getppid(), "clock": "0", "uptime": int(time.time() - self.control.started),
            "total": dict(self.control.totals),
            "pool": {"implementation": f"amqptasks:{s.pool}", "max-concurrency": s.concurrency,
                     "processes": [os.getpid()], "max-tasks-per-child": s.max_tasks_per_child or "N/A"},
            "broker": _broker_info(w.app.config.broker.url),
            "prefetch_count": s.prefetch or s.concurrency * 4,
            "rusage": {"utime": usage.ru_utime, "stime": usage.ru_stime, "maxrss": usage.ru_maxrss},
            # amqptasks' own
            "concurrency": s.concurrency, "queues": list(s.queues), "processed": w.processed, "running": w.running,
        }  # fmt: skip

    async def do_active_queues(self, **_: Any) -> list[dict[str, Any]]:
        return [
            {"name": q, "exchange": {"name": "", "type": "direct"}, "routing_key": q, "durable": True,
             "exclusive": False, "auto_delete": False, "no_ack": False, "alias": None, "bindings": [],
             "queue_arguments": None, "binding_arguments": None, "consumer_arguments": None}
            for q in self.worker.settings.queues
        ]  # fmt: skip

    async def do_conf(self, with_defaults: bool = False, **_: Any) -> dict[str, Any]:
        s, config = self.worker.settings, self.worker.app.config
        return {"broker_url": BrokerURL.parse(config.broker.url).masked(), "result_backend": config.results.backend,
                "result_expires": config.results.result_expires, "worker_concurrency": s.concurrency,
                "worker_pool": s.pool, "worker_prefetch_multiplier": 4}  # fmt: skip

    # --- control ------------------------------------------------------------------------------------------------

    async def do_rate_limit(self, task_name: str, rate_limit: str | None = None, **_: Any) -> dict[str, Any]:
        rate = None if rate_limit in (None, "", 0, "0") else str(rate_limit)
        if rate is not None:
            parse_rate(rate)  # a bad rate is refused here (the error reply), not when the next task starts
        for m in self.worker.middleware:
            if isinstance(m, RateLimits):
                m.overrides[task_name] = rate
        log.info("control: rate limit of %s set to %s", task_name, rate or "the task's own")
        return ok(f"rate limit of {task_name} set to {rate or 'its own'}")

    async def do_revoke(self, task_id: str | list[str], terminate: bool = False, **_: Any) -> dict[str, Any]:
        ids = [task_id] if isinstance(task_id, str) else [str(i) for i in task_id]
        replies = [await self.control.revoke(i, terminate) for i in ids]
        return ok(replies[0] if len(replies) == 1 else "; ".join(replies))

    async def do_terminate(self, task_id: str | list[str], signal: str | None = None, **_: Any) -> dict[str, Any]:
        return await self.do_revoke(task_id, terminate=True)

    async def do_shutdown(self, msg: str = "Got shutdown from remote", **_: Any) -> dict[str, Any]:
        log.warning("control: %s: warm shutdown", msg)
        asyncio.get_running_loop().call_soon(self.worker.stop)
        return ok("shutdown")

    async def do_heartbeat(self, **_: Any) -> None:
        if self.control.events is not None:
            self.control.events.heartbeat()

    async def do_clock(self, **_: Any) -> dict[str, Any]:
        return {"clock": 0}
