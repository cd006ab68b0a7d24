"""Publishing throughput and per-call latency: amqptasks vs Celery 5 vs Dramatiq, on the same local RabbitMQ.

    .venv/bin/python bench/publish.py [--n 20000] [--per-call-n 2000] [--warmup 1000] [--repeat 3] [--broker ...]

Every row gets a fresh vhost, a durable classic queue ``bench``, persistent messages and the same no-op task
called with ``(1, 2)``. Each row warms up first (connection, declarations, code paths), then the queue is
emptied, the row measured, and the queue checked to hold exactly n messages. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import random
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package: it runs as a script

from _common import (
    QUEUE,
    Row,
    fresh_vhost,
    machine,
    markdown_table,
    settle_warmup,
    timed_calls,
    wait_for_depth,
)

from amqptasks import App
from amqptasks.broker import BrokerURL, ManagementClient, open_blocking
from amqptasks.broker.rabbitmq.frames import encode_publish
from amqptasks.config import load_config_text
from amqptasks.constants import DEFAULT_BROKER_URL, ENV_BROKER_URL

TASK = "bench.noop"
ARGS = (1, 2)
AIO_CHUNK = 1_000


@dataclass(frozen=True)
class Sizes:
    n: int
    per_call_n: int
    warmup: int


def noop(x: int, y: int) -> None:
    """The task every framework publishes; nothing consumes it during the benchmark."""


# --- amqptasks ---------------------------------------------------------------------------------------------


def amqptasks_app(url: BrokerURL) -> App:
    config = load_config_text(
        f"topology:\n  provision: true\n  queues:\n    - {{name: {QUEUE}}}\n", "bench.yaml", broker_url=url.to_url()
    )
    app = App(config=config, broker_url=url.to_url())
    app.task(name=TASK, queue=QUEUE)(noop)
    return app


def amqptasks_delay(url: BrokerURL, sizes: Sizes) -> Row:
    with amqptasks_app(url) as app:
        task = app.tasks[TASK]
        for _ in range(sizes.warmup):
            task.delay(*ARGS)
        settle_warmup(url, sizes.warmup)
        seconds, latencies = timed_calls(lambda: task.delay(*ARGS), sizes.per_call_n)
    mode = f"`delay()` one by one (n={sizes.per_call_n:,})"
    return Row("amqptasks", mode, True, sizes.per_call_n, seconds, latencies)


def amqptasks_delay_loop(url: BrokerURL, sizes: Sizes) -> Row:
    """The loop people write: ``delay()`` n times, each call returning once its message is confirmed."""
    with amqptasks_app(url) as app:
        task = app.tasks[TASK]
        for _ in range(sizes.warmup):
            task.delay(*ARGS)
        settle_warmup(url, sizes.warmup)
        start = time.perf_counter()
        for _ in range(sizes.n):
            task.delay(*ARGS)
        seconds = time.perf_counter() - start
    return Row("amqptasks", f"`delay()` in a loop, each confirmed (n={sizes.n:,})", True, sizes.n, seconds)


def amqptasks_batch(url: BrokerURL, sizes: Sizes) -> Row:
    """The same loop inside ``with app.batch():``; the clock stops when the block has every confirm."""
    with amqptasks_app(url) as app:
        task = app.tasks[TASK]
        with app.batch():
            for _ in range(sizes.warmup):
                task.delay(*ARGS)
        settle_warmup(url, sizes.warmup)
        start = time.perf_counter()
        with app.batch() as results:
            for _ in range(sizes.n):
                task.delay(*ARGS)
        seconds = time.perf_counter() - start
    assert len(results) == sizes.n
    return Row("amqptasks", "`delay()` in a loop inside `with app.batch():`, all confirmed at the end", True,
               sizes.n, seconds)  # fmt: skip


def amqptasks_publish_many(stream: bool) -> Callable[[BrokerURL, Sizes], Row]:
    def run(url: BrokerURL, sizes: Sizes) -> Row:
        with amqptasks_app(url) as app:
            task = app.tasks[TASK]
            app.publish_many([task.s(*ARGS) for _ in range(sizes.warmup)], stream=stream)
            settle_warmup(url, sizes.warmup)
            start = time.perf_counter()
            # Building the signatures is part of the cost: a list by default, a generator when streaming.
            if stream:
                app.publish_many((task.s(*ARGS) for _ in range(sizes.n)), stream=True)
            else:
                app.publish_many([task.s(*ARGS) for _ in range(sizes.n)])
            seconds = time.perf_counter() - start
        if stream:
            return Row("amqptasks", "`publish_many(stream=True)`, pipelined confirms", True, sizes.n, seconds)
        return Row("amqptasks", "`publish_many()`, pipelined confirms", True, sizes.n, seconds)

    return run


#: Header tables for the ``--header-probe`` rows: what the broker's ceiling is with fewer headers than the Celery
#: protocol's (Dramatiq's messages carry none).
HEADER_PROBES: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "only the `id` and `task` headers": lambda headers: {"id": headers["id"], "task": headers["task"]},
    "no headers": lambda headers: {},
}


def broker_ceiling(url: BrokerURL, sizes: Sizes, probe: str | None = None) -> Row:
    """The broker's own limit for this workload: publish_many's messages, encoded *before* the clock starts, written
    256 to a send(2) with up to 10,000 confirms outstanding. No client does less work per message than this.
    ``probe`` names a HEADER_PROBES entry: the same messages with a smaller header table."""
    with amqptasks_app(url) as app:
        task = app.tasks[TASK]
        app.publish_many([task.s(*ARGS) for _ in range(sizes.warmup)])  # declares the queue, warms the broker up
        settle_warmup(url, sizes.warmup)
        envelopes = [app._prepare(task.options, ARGS, {}, {}).envelope for _ in range(sizes.n)]
    if probe is not None:
        envelopes = [replace(e, headers=HEADER_PROBES[probe](e.headers)) for e in envelopes]
    connection = open_blocking(url, connection_name="amqptasks bench ceiling")
    try:
        channel = connection.channel()
        impl = channel._impl
        frame_max = impl.connection._body_max_length + 8
        frames = [encode_publish(impl.channel_number, e, frame_max) for e in envelopes]
        confirmed = [0]
        impl.confirm_delivery(ack_nack_callback=lambda f: confirmed.__setitem__(0, f.method.delivery_tag))
        connection.process_data_events(time_limit=0.5)
        emit, window, sent, n = impl.connection._output_marshaled_frames, 10_000, 0, sizes.n
        start = time.perf_counter()
        while sent < n:
            if sent - confirmed[0] > window - 256:
                channel._flush_output(lambda sent=sent: sent - confirmed[0] <= window - 1_256)  # type: ignore[misc]
            chunk = frames[sent : sent + 256]
            emit([b"".join(chunk)])
            sent += len(chunk)
            connection.process_data_events(time_limit=0)
        channel._flush_output(lambda: confirmed[0] >= n)
        seconds = time.perf_counter() - start
    finally:
        connection.close()
    mode = "pre-encoded frames, pipelined confirms: no client work"
    return Row("(broker)", f"{mode}; {probe}" if probe else mode, True, sizes.n, seconds)


def amqptasks_adelay(url: BrokerURL, sizes: Sizes) -> Row:
    app = amqptasks_app(url)
    task = app.tasks[TASK]

    async def in_chunks(n: int) -> None:
        for done in range(0, n, AIO_CHUNK):
            await asyncio.gather(*(task.adelay(*ARGS) for _ in range(min(AIO_CHUNK, n - done))))

    async def run() -> float:
        try:
            # One call first: App.aio_publisher() has no lock, so a first gather() of 1,000 adelay() calls would
            # open 1,000 connections (and leak all but one), enough to exhaust the broker's file descriptors.
            await task.adelay(*ARGS)
            await in_chunks(sizes.warmup - 1)
            await asyncio.to_thread(settle_warmup, url, sizes.warmup)
            start = time.perf_counter()
            await in_chunks(sizes.n)
            return time.perf_counter() - start
        finally:
            await app.aclose()
            app.close()

    seconds = asyncio.run(run())
    mode = f"asyncio `adelay()`, `gather` of {AIO_CHUNK:,} at a time"
    return Row("amqptasks", mode, True, sizes.n, seconds)


# --- Celery 5 ----------------------------------------------------------------------------------------------


def celery_apply_async(confirm: bool) -> Callable[[BrokerURL, Sizes], Row]:
    def run(url: BrokerURL, sizes: Sizes) -> Row:
        from celery import Celery
        from kombu import Queue

        app = Celery("bench", broker=url.to_url(), set_as_current=False)
        app.conf.update(task_queues=[Queue(QUEUE)], task_default_queue=QUEUE, broker_connection_retry_on_startup=True)
        if confirm:
            app.conf.broker_transport_options = {"confirm_publish": True}
        task = app.task(name=TASK)(noop)
        n = sizes.per_call_n if confirm else sizes.n
        try:
            for _ in range(sizes.warmup):
                task.apply_async(ARGS)
            settle_warmup(url, sizes.warmup)
            seconds, latencies = timed_calls(lambda: task.apply_async(ARGS), n)
        finally:
            app.close()
        if confirm:
            mode = f"`apply_async()` one by one, `confirm_publish: True` (n={n:,})"
        else:
            mode = "`apply_async()` one by one (default)"
        return Row("Celery 5", mode, confirm, n, seconds, latencies)

    return run


# --- Dramatiq ----------------------------------------------------------------------------------------------


def dramatiq_send(confirm: bool) -> Callable[[BrokerURL, Sizes], Row]:
    def run(url: BrokerURL, sizes: Sizes) -> Row:
        import dramatiq
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        broker = RabbitmqBroker(url=url.to_url(), confirm_delivery=confirm)  # False is its default
        n = sizes.per_call_n if confirm else sizes.n
        try:
            actor = dramatiq.actor(noop, actor_name=TASK, queue_name=QUEUE, broker=broker)
            for _ in range(sizes.warmup):
                actor.send(*ARGS)
            settle_warmup(url, sizes.warmup)
            seconds, latencies = timed_calls(lambda: actor.send(*ARGS), n)
        finally:
            broker.close()
        if confirm:
            mode = f"`send()` one by one, `confirm_delivery=True` (n={n:,})"
        else:
            mode = "`send()` one by one (default `RabbitmqBroker`)"
        return Row("Dramatiq", mode, confirm, n, seconds, latencies)

    return run


ROWS: list[tuple[str, Callable[[BrokerURL, Sizes], Row]]] = [
    ("amqptasks delay()", amqptasks_delay),
    ("amqptasks delay() loop", amqptasks_delay_loop),
    ("amqptasks batch()", amqptasks_batch),
    ("amqptasks publish_many()", amqptasks_publish_many(stream=False)),
    ("amqptasks publish_many(stream=True)", amqptasks_publish_many(stream=True)),
    ("amqptasks adelay()", amqptasks_adelay),
    ("Celery apply_async()", celery_apply_async(confirm=False)),
    ("Celery apply_async() confirm_publish", celery_apply_async(confirm=True)),
    ("Dramatiq send()", dramatiq_send(confirm=False)),
    ("Dramatiq send() confirm_delivery", dramatiq_send(confirm=True)),
    ("broker ceiling", broker_ceiling),
]


def measure(name: str, bench: Callable[[BrokerURL, Sizes], Row], broker: BrokerURL, sizes: Sizes) -> Row:
    mgmt = ManagementClient.for_broker(broker)
    print(f"running {name} ...", file=sys.stderr, flush=True)
    with fresh_vhost(mgmt, broker) as url:
        row = bench(url, sizes)
        # Unconfirmed publishers may return before the broker has every message: give them time to land.
        depth = wait_for_depth(url, row.n)
    return Row(row.framework, row.mode, row.confirmed, row.n, row.seconds, row.latencies_ns, depth)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="messages per throughput row (default 20,000)")
    parser.add_argument(
        "--per-call-n", type=int, default=2_000, help="messages for rows confirmed one call at a time (default 2,000)"
    )
    parser.add_argument("--warmup", type=int, default=1_000, help="warm-up messages per row (default 1,000)")
    parser.add_argument("--broker", default=os.environ.get(ENV_BROKER_URL) or DEFAULT_BROKER_URL)
    parser.add_argument(
        "--header-probe",
        action="store_true",
        help="add broker-ceiling rows for the same messages with fewer headers (what the header table costs)",
    )
    parser.add_argument("--only", help="comma-separated row names (Dramatiq's and the ceiling always run)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds, each row once in a shuffled order; the table "
                        "shows each row's median (default 3)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=None, help="seed of the rounds' order (default: random)")
    args = parser.parse_args(argv)
    if min(args.n, args.per_call_n, args.warmup, args.repeat) < 1:
        parser.error("--n, --per-call-n, --warmup and --repeat must be at least 1")
    logging.basicConfig(level=logging.WARNING)

    broker = BrokerURL.parse(args.broker)
    sizes = Sizes(args.n, args.per_call_n, args.warmup)
    benches = list(ROWS)
    if args.header_probe:
        benches += [
            (f"broker ceiling, {probe}", functools.partial(broker_ceiling, probe=probe)) for probe in HEADER_PROBES
        ]
    if args.only:
        wanted = {name.strip() for name in args.only.split(",")} | {
            "Dramatiq send()",
            "broker ceiling",
            "Dramatiq send() confirm_delivery",
        }
        benches = [(name, bench) for name, bench in benches if name in wanted]
    load_before = os.getloadavg()[0]
    # Each round runs every row once, in an order of its own: a row that leaves the broker busy (deleting its
    # vhost's 20,000 persistent messages) slows whichever row comes next, so no row may always follow the same one.
    order = random.Random(args.seed)
    trials: dict[str, list[Row]] = {name: [] for name, _ in benches}
    for _ in range(args.repeat):
        for name, bench in order.sample(benches, len(benches)):
            trials[name].append(measure(name, bench, broker, sizes))
    rows = {name: median_row(runs) for name, runs in trials.items()}

    print(markdown_table(list(rows.values())))
    print()
    theirs, ceiling = rows["Dramatiq send()"], rows["broker ceiling"]
    confirmed = rows["Dramatiq send() confirm_delivery"]
    for name in ("amqptasks publish_many()", "amqptasks publish_many(stream=True)"):
        if (ours := rows.get(name)) is not None:
            print(f"{name[10:]} vs Dramatiq send(): {ours.rate / theirs.rate:.2f}x; vs Dramatiq send() with "
                  f"confirm_delivery=True: {ours.rate / confirmed.rate:.2f}x; {ours.rate / ceiling.rate:.0%} of the "
                  "broker's confirmed ceiling")  # fmt: skip
    if (ours := rows.get("amqptasks batch()")) is not None:
        verdict = "met" if ours.rate >= theirs.rate else "NOT met"
        print(f"batch() vs Dramatiq send(): {ours.rate / theirs.rate:.2f}x (target ≥ 1x: {verdict}); "
              f"{ours.rate / ceiling.rate:.0%} of the broker's confirmed ceiling")  # fmt: skip
    if (ours := rows.get("amqptasks delay() loop")) is not None:
        print(f"delay() loop vs Dramatiq send(): {ours.rate / theirs.rate:.2f}x")
    if (streamed := rows.get("amqptasks publish_many(stream=True)")) is not None:
        share = streamed.rate / ceiling.rate
        print(f"publish_many(stream=True): {share:.0%} of the broker's confirmed ceiling "
              f"(target ≥ 95%: {'met' if share >= 0.95 else 'NOT met'})")  # fmt: skip
    if args.repeat > 1:
        for name, runs in trials.items():
            print(f"{name}: median of {len(runs)}: " + " / ".join(f"{run.rate:,.0f}" for run in runs) + " msgs/s")
    print(
        f"machine: {machine(ManagementClient.for_broker(broker), broker.host)}; load average {load_before:.1f} "
        f"before, {os.getloadavg()[0]:.1f} after"
    )
    return 0 if all(run.depth == run.n for runs in trials.values() for run in runs) else 1


def median_row(runs: list[Row]) -> Row:
    """The run with the median rate (of an even number, the lower middle one)."""
    return sorted(runs, key=lambda run: run.rate)[(len(runs) - 1) // 2]


if __name__ == "__main__":
    sys.exit(main())
