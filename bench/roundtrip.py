"""Warm round trip ``add.delay(i, 1).get(timeout=10)``: amqptasks vs Celery 5, rpc:// results, on the same RabbitMQ.

    .venv/bin/python bench/roundtrip.py [--n 500] [--warmup 50] [--broker amqp://...] [--no-prefork]

Every row gets a fresh vhost, a durable queue ``bench``, the same no-op ``bench.add(x, y)`` task and a worker
subprocess started with the framework's own command (8 threads, or Celery's prefork pool with 8 children). The
caller publishes one task, waits for its result through the rpc:// backend (direct reply-to), and only then sends
the next: each latency is one full publish -> worker -> result -> caller trip. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent
sys.path.insert(0, str(BENCH_DIR))  # bench/ is not a package: it runs as a script

from _common import QUEUE, fresh_vhost, machine  # noqa: E402

from amqptasks.broker import BrokerURL, ManagementClient  # noqa: E402
from amqptasks.constants import DEFAULT_BROKER_URL, ENV_BROKER_URL  # noqa: E402

TASK = "bench.add"
CONCURRENCY = 8
GET_TIMEOUT_S = 10.0
#: The first call also waits for the worker to start (imports, connection, consumer).
FIRST_CALL_TIMEOUT_S = 60.0
URL_ENV = "BENCH_ROUNDTRIP_URL"

AMQPTASKS_MODULE = f'''
import os

from amqptasks import App
from amqptasks.config import load_config_text

YAML = """
topology:
  provision: true
  queues:
    - {{name: {QUEUE}}}
results: {{backend: "rpc://"}}
"""


def add(x, y):
    return x + y


def make(url):
    app = App(config=load_config_text(YAML, "roundtrip.yaml", broker_url=url), broker_url=url)
    app.task(name="{TASK}", queue="{QUEUE}")(add)
    return app


app = make(os.environ["{URL_ENV}"])
'''

CELERY_MODULE = f"""
import os

from celery import Celery
from kombu import Queue


def add(x, y):
    return x + y


def make(url):
    app = Celery("roundtrip", broker=url, backend="rpc://", set_as_current=False)
    app.conf.update(
        task_queues=[Queue("{QUEUE}")],  # durable, persistent messages: Celery's defaults
        task_default_queue="{QUEUE}",
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    app.task(name="{TASK}", shared=False)(add)
    return app


app = make(os.environ["{URL_ENV}"])
"""


@dataclass(frozen=True)
class Row:
    framework: str
    backend: str
    pool: str
    latencies_ns: Sequence[int]

    def percentile_ms(self, p: float) -> float:
        ordered = sorted(self.latencies_ns)
        rank = max(1, math.ceil(p / 100 * len(ordered)))  # nearest rank
        return ordered[rank - 1] / 1e6


@dataclass(frozen=True)
class Spec:
    name: str
    framework: str
    pool: str
    module: str
    source: str
    command: Callable[[str], list[str]]


# --- the worker subprocess ---------------------------------------------------------------------------------


@contextmanager
def worker_process(spec: Spec, url: BrokerURL, workdir: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The worker, started from *workdir* (where its module lives); terminated, then killed, on the way out."""
    (workdir / f"{spec.module}.py").write_text(spec.source, encoding="utf-8")
    # The app module first; then whatever PYTHONPATH says (a snapshot of amqptasks to measure, see --versus).
    path = os.pathsep.join(filter(None, [str(workdir), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, URL_ENV: url.to_url(), ENV_BROKER_URL: url.to_url(), "PYTHONPATH": path}
    log = (workdir / f"{spec.module}.log").open("wb")
    process = subprocess.Popen(
        spec.command(spec.module), cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        yield process
    finally:
        stop(process)
        log.close()


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # its own session: the worker and its pool children
        process.wait(10)
    else:
        with contextlib.suppress(ProcessLookupError):  # prefork children left behind by a parent that exited first
            os.killpg(process.pid, signal.SIGKILL)


# --- callers -----------------------------------------------------------------------------------------------


def load_client(url: BrokerURL, workdir: Path, module: str) -> tuple[Callable[..., object], Callable[[], None]]:
    """The caller's app: the worker's own module, run here against the same vhost (both frameworks' apps have
    ``tasks[name].delay(...).get(timeout=...)`` and ``close()``)."""
    namespace: dict[str, object] = {"__name__": module}
    os.environ[URL_ENV] = url.to_url()
    exec(compile((workdir / f"{module}.py").read_text(encoding="utf-8"), module, "exec"), namespace)
    app = namespace["app"]
    task = app.tasks[TASK]  # type: ignore[attr-defined]

    def call(i: int, timeout: float = GET_TIMEOUT_S) -> object:
        return task.delay(i, 1).get(timeout=timeout)

    return call, app.close  # type: ignore[attr-defined]


def amqptasks_command(module: str) -> list[str]:
    return [str(VENV_BIN / "amqptasks"), "worker", "-A", f"{module}:app", "-Q", QUEUE]


def celery_command(pool: str) -> Callable[[str], list[str]]:
    def command(module: str) -> list[str]:
        return [str(VENV_BIN / "celery"), "-A", module, "worker", "-Q", QUEUE, "--pool", pool]

    return command


def specs(prefork: bool, amqptasks_args: Sequence[str] = ()) -> list[Spec]:
    common = ["--concurrency", str(CONCURRENCY)]
    rows = [
        Spec(
            "amqptasks",
            "amqptasks",
            " ".join(["`amqptasks worker` with no flags", *amqptasks_args])
            + f" (one process per core, threads x{CONCURRENCY} each)",
            "rt_amqptasks",
            AMQPTASKS_MODULE,
            lambda m: [*amqptasks_command(m), *amqptasks_args],  # its defaults: what users get
        ),
        Spec(
            "Celery threads",
            "Celery 5",
            f"threads x{CONCURRENCY} (`--pool threads`)",
            "rt_celery",
            CELERY_MODULE,
            lambda m: [*celery_command("threads")(m), *common, "-l", "warning"],
        ),
    ]
    if prefork:
        rows.append(
            Spec(
                "Celery prefork",
                "Celery 5",
                f"prefork x{CONCURRENCY} (Celery's default pool)",
                "rt_celery_prefork",
                CELERY_MODULE,
                lambda m: [*celery_command("prefork")(m), *common, "-l", "warning"],
            )
        )
    return rows


# --- measuring ---------------------------------------------------------------------------------------------


@contextmanager
def caller(spec: Spec, broker: BrokerURL, warmup: int) -> Iterator[Callable[[int], int]]:
    """A worker for *spec* in a fresh vhost, warmed up; yields ``timed(i)``: one checked round trip, in ns."""
    mgmt = ManagementClient.for_broker(broker)
    print(f"running {spec.name} ...", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="amqptasks-roundtrip-") as tmp, fresh_vhost(mgmt, broker) as url:
        workdir = Path(tmp)
        with worker_process(spec, url, workdir) as process:
            call, close = load_client(url, workdir, spec.module)
            clock = time.perf_counter_ns

            def timed(i: int) -> int:
                before = clock()
                value = call(i)
                elapsed = clock() - before
                if value != i + 1:
                    raise RuntimeError(f"{spec.name}: add({i}, 1) returned {value!r}")
                return elapsed

            try:
                if call(0, timeout=FIRST_CALL_TIMEOUT_S) != 1:  # worker up, queue declared, result path works
                    raise RuntimeError(f"{spec.name}: wrong result")
                for i in range(1, warmup):
                    call(i)
                yield timed
            except BaseException:
                log = (workdir / f"{spec.module}.log").read_text(encoding="utf-8", errors="replace")
                print(f"--- {spec.name} worker log (exit {process.poll()}) ---\n{log[-4000:]}", file=sys.stderr)
                raise
            finally:
                close()


def measure(spec: Spec, broker: BrokerURL, n: int, warmup: int) -> Row:
    with caller(spec, broker, warmup) as timed:
        latencies = [timed(i) for i in range(n)]
    return Row(spec.framework, "`rpc://`", spec.pool, latencies)


def serve_calls(spec: Spec, broker: BrokerURL, warmup: int) -> None:
    """``--serve-calls``: one round trip per line read on stdin, its latency (ns) written back (see --versus)."""
    with caller(spec, broker, warmup) as timed:
        print("ready", flush=True)
        for i, _line in enumerate(sys.stdin):
            print(timed(i), flush=True)


def versus(spec: Spec, broker: BrokerURL, n: int, warmup: int, other: str, flags: str, other_flags: str) -> list[Row]:
    """The amqptasks row for this tree and for the amqptasks package under *other*, paired: two caller processes,
    each with its own worker and vhost, take turns call by call, so both see the same moment of the machine."""
    here = str(Path(__file__).resolve())
    base = [sys.executable, here, "--serve-calls", "--warmup", str(warmup), "--broker", broker.to_url()]
    sides = []
    for path, given in ((None, flags), (other, other_flags)):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [path, os.environ.get("PYTHONPATH")]))}
        args = [*base, "--amqptasks-args", given]
        sides.append(subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True))
    try:
        for side in sides:
            assert side.stdout is not None
            if side.stdout.readline().strip() != "ready":
                raise RuntimeError("a caller process did not start (its error is above)")
        latencies: list[list[int]] = [[], []]
        for i in range(n):
            for k in (0, 1) if i % 2 == 0 else (1, 0):
                side = sides[k]
                assert side.stdin is not None and side.stdout is not None
                side.stdin.write("go\n")
                side.stdin.flush()
                latencies[k].append(int(side.stdout.readline()))
    finally:
        for side in sides:
            if side.stdin is not None:
                side.stdin.close()
            side.wait(60)
    return [
        Row(spec.framework, "`rpc://`", f"this tree: `amqptasks worker` {flags or '(no flags)'}", latencies[0]),
        Row(spec.framework, "`rpc://`", f"{other}: `amqptasks worker` {other_flags or '(no flags)'}", latencies[1]),
    ]


def markdown_table(rows: Sequence[Row]) -> str:
    lines = [
        "| framework | backend | worker pool | p50 ms | p90 ms | p99 ms | max ms | calls |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        p50, p90, p99 = (row.percentile_ms(p) for p in (50, 90, 99))
        lines.append(
            f"| {row.framework} | {row.backend} | {row.pool} | {p50:.2f} | {p90:.2f} | {p99:.2f} "
            f"| {max(row.latencies_ns) / 1e6:.2f} | {len(row.latencies_ns):,} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=500, help="measured round trips per row (default 500)")
    parser.add_argument("--warmup", type=int, default=50, help="round trips before measuring (default 50)")
    parser.add_argument("--no-prefork", action="store_true", help="skip the Celery prefork row")
    parser.add_argument("--only", help="comma-separated rows to run: amqptasks, Celery threads, Celery prefork")
    parser.add_argument("--amqptasks-args", default="", help="extra flags for the amqptasks worker row")
    parser.add_argument(
        "--versus",
        metavar="DIR",
        help="the amqptasks row only, paired call by call with the amqptasks package in DIR (a snapshot: "
        "git archive REV amqptasks | tar -x -C DIR)",
    )
    parser.add_argument("--versus-args", default="", help="with --versus: the flags of DIR's worker")
    parser.add_argument("--serve-calls", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--broker", default=os.environ.get(ENV_BROKER_URL, DEFAULT_BROKER_URL))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    broker = BrokerURL.parse(args.broker)
    if args.serve_calls:
        serve_calls(specs(False, args.amqptasks_args.split())[0], broker, max(1, args.warmup))
        return 0
    if args.versus:
        spec = specs(False, args.amqptasks_args.split())[0]
        print(
            markdown_table(
                versus(spec, broker, args.n, max(1, args.warmup), args.versus, args.amqptasks_args, args.versus_args)
            )
        )
        print()
        print(machine(ManagementClient.for_broker(broker), broker.host))
        return 0
    chosen = [
        s
        for s in specs(not args.no_prefork, args.amqptasks_args.split())
        if not args.only or s.name in args.only.split(",")
    ]
    rows = [measure(spec, broker, args.n, max(1, args.warmup)) for spec in chosen]
    print(markdown_table(rows))
    print()
    print(machine(ManagementClient.for_broker(broker), broker.host))
    return 0


if __name__ == "__main__":
    sys.exit(main())
