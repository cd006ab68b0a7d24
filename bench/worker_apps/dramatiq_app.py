"""Dramatiq: ``dramatiq worker_apps.dramatiq_app`` (run from bench/)."""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from worker_apps.counter import tick

QUEUE = "bench"
TASK = "bench.noop"


def noop(x: int, y: int) -> None:
    tick()


def make(url: str) -> tuple[RabbitmqBroker, dramatiq.Actor[[int, int], None]]:
    """The broker (durable queues, persistent messages, ack after the actor ran: Dramatiq's defaults)."""
    broker = RabbitmqBroker(url=url)
    actor = dramatiq.actor(actor_name=TASK, queue_name=QUEUE, broker=broker)(noop)
    return broker, actor


if os.environ.get("BENCH_BROKER_URL"):
    broker, actor = make(os.environ["BENCH_BROKER_URL"])
    dramatiq.set_broker(broker)
