"""Worker throughput, CPU and memory: amqptasks vs Celery 5 vs Dramatiq, on the same local RabbitMQ.

    .venv/bin/python bench/worker.py [--n 20000] [--delayed 100000] [--delayed-wait 120] [--broker amqp://...]
    .venv/bin/python bench/worker.py --profile [--py-spy PATH]     # where amqptasks' worker spends its time

Every framework runs its own worker command with its own default settings (and amqptasks once more, tuned) on
the same no-op task ``bench.noop(1, 2)``, a durable queue ``bench``, persistent messages, ack after the task.
Each task appends one byte to a per-process file (bench/worker_apps/counter.py): completions are counted from
the files' sizes, the same way for every framework, with no network call. Each measurement gets a fresh vhost.
See bench/README.md, "Worker benchmark".
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import logging
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))  # bench/ is not a package: it runs as a script; worker_apps lives here

from _common import QUEUE, fresh_vhost, machine, wait_for_depth  # noqa: E402
from worker_apps.counter import COUNT_DIR_ENV  # noqa: E402

from amqptasks.broker import BrokerURL, ManagementClient, open_blocking  # noqa: E402
from amqptasks.constants import DEFAULT_BROKER_URL, ENV_BROKER_URL  # noqa: E402

ARGS = (1, 2)
#: Countdown of the delayed tasks in (d): they must not fall due during the run.
COUNTDOWN_S = 3600
#: amqptasks publishes end to end with publish_many() in chunks of this many, so the worker starts early.
PUBLISH_CHUNK = 1_000
POLL_S = 0.01
#: A measurement fails when no task completes for this long.
STALL_S = 60.0
BIN = Path(sys.executable).parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
OURS, TUNED, CELERY, DRAMATIQ = "amqptasks", "amqptasks (tuned)", "Celery 5", "Dramatiq"
CEILING = "broker ceiling (drain)"
#: amqptasks' default prefetch per process (WorkerSettings), for the settings line.
DEFAULT_PREFETCH = 256

log = logging.getLogger("bench.worker")


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- the worker process tree, from /proc --------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # fields from 3 (state) on; the name may hold spaces


def process_tree(root: int) -> list[int]:
    """*root* and all its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def cpu_seconds(root: int) -> float:
    """utime + stime of the tree (all threads), plus cutime + cstime (children already reaped), in seconds."""
    ticks = 0
    for pid in process_tree(root):
        fields = _stat(pid)
        if fields is not None:
            ticks += sum(int(v) for v in fields[11:15])  # stat fields 14..17: utime stime cutime cstime
    return ticks / CLK_TCK


def memory(root: int) -> tuple[int, int]:
    """(RSS, PSS) of the tree in bytes. RSS counts the pages forked processes share once per process; PSS splits
    them between the processes sharing them, so it is the fairer sum for a tree of forks."""
    rss = pss = 0
    for pid in process_tree(root):
        try:
            with open(f"/proc/{pid}/statm", encoding="ascii") as f:
                rss += int(f.read().split()[1]) * PAGE
            with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as f:
                pss += next((int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:")), 0)
        except OSError:
            pass
    return rss, pss


@dataclass
class WorkerProcess:
    command: list[str]
    env: dict[str, str]
    logfile: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.logfile, "wb") as out:
            # Its own session: on a failed stop, the process group it leads is killed by its id.
            self.proc = subprocess.Popen(self.command, cwd=BENCH_DIR, env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"the worker exited with status {self.proc.returncode}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 60.0) -> None:
        """Warm shutdown (SIGTERM, as a process manager sends); the group is killed if it hangs or leaves children."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("worker %d did not stop in %g s: killing its process group", self.pid, timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)  # leftovers (pool children) of this worker only
        self.proc.wait()


# --- counting completions -----------------------------------------------------------------------------------


@dataclass
class Counts:
    directory: Path

    def _files(self, suffix: str) -> list[os.DirEntry[str]]:
        return [e for e in os.scandir(self.directory) if e.name.endswith(suffix)]

    def total(self) -> int:
        return sum(e.stat().st_size for e in self._files(".count"))

    def last_ns(self) -> int:
        """The newest write to any count file (the kernel's coarse clock: a few ms of resolution)."""
        return max(e.stat().st_mtime_ns for e in self._files(".count"))

    def first_ns(self) -> int:
        """The earliest first completion of any worker process (the task writes it, see counter.py)."""
        return min(int(Path(e.path).read_text() or sys.maxsize) for e in self._files(".first"))

    def wait_for(self, n: int, worker: WorkerProcess, on_first: Callable[[int], None] | None = None) -> int:
        """Poll until *n* tasks completed; *on_first* gets the count when the first completions show up."""
        seen, progress_at = 0, time.monotonic()
        while True:
            done = self.total()
            if done and not seen and on_first is not None:
                on_first(done)
            if done != seen:
                seen, progress_at = done, time.monotonic()
            if done >= n:
                return done
            if time.monotonic() - progress_at > STALL_S:
                raise RuntimeError(f"stalled at {done:,} of {n:,} completions:\n{worker.log_tail()}")
            worker.check_alive()
            time.sleep(POLL_S)


# --- the frameworks -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Framework:
    name: str
    #: The worker settings in words (its defaults, on this machine), for the output.
    settings: str
    command: list[str]
    #: (url, n, delayed, chunked) → publish n tasks (delayed: 1-hour countdown); returns how, in words.
    publish: Callable[[BrokerURL, int, bool, bool], str]
    #: Consumers on queue ``bench`` once the worker is ready (one per consuming process).
    consumers: int
    #: Where this framework's delayed tasks wait.
    delayed_in: str
    is_ours: bool = False
    #: "defaults" (no flags for anyone) or "tuned" (amqptasks tuned, and the broker's ceiling).
    table: str = "defaults"
    #: Only (a) drain makes sense (the raw consumer).
    drain_only: bool = False


def publish_amqptasks(url: BrokerURL, n: int, delayed: bool, chunked: bool) -> str:
    from worker_apps.amqptasks_app import TASK, make

    app = make(url.to_url())
    try:
        app.provision()  # declared already by the worker or an earlier call: cheap, and outside the timing anyway
        task = app.tasks[TASK]
        options = {"countdown": COUNTDOWN_S} if delayed else {}
        chunk = PUBLISH_CHUNK if chunked else n
        for done in range(0, n, chunk):
            app.publish_many([task.s(*ARGS).set(**options) for _ in range(min(chunk, n - done))])
    finally:
        app.close()
    return f"`publish_many()` in chunks of {PUBLISH_CHUNK:,}, confirmed" if chunked else "one `publish_many()`"


def publish_celery(url: BrokerURL, n: int, delayed: bool, chunked: bool) -> str:
    from worker_apps.celery_app import TASK, make

    app = make(url.to_url())
    try:
        task = app.tasks[TASK]
        options = {"countdown": COUNTDOWN_S} if delayed else {}
        for _ in range(n):
            task.apply_async(ARGS, **options)
    finally:
        app.close()
    return "`apply_async()` in a loop (its default: unconfirmed)"


def publish_dramatiq(url: BrokerURL, n: int, delayed: bool, chunked: bool) -> str:
    from worker_apps.dramatiq_app import make

    broker, actor = make(url.to_url())
    try:
        for _ in range(n):
            if delayed:
                actor.send_with_options(args=ARGS, delay=COUNTDOWN_S * 1000)
            else:
                actor.send(*ARGS)
    finally:
        broker.close()
    return "`send()` in a loop (its default: unconfirmed)"


def frameworks(tuned: str) -> list[Framework]:
    """Two tables: every framework with no flags at all (what a user gets), and amqptasks tuned beside the broker's
    own ceiling for the drain."""
    cores = os.cpu_count() or 1
    ours = [str(BIN / "amqptasks"), "worker", "-A", "worker_apps.amqptasks_app:app", "-Q", QUEUE]
    tuned_args = shlex.split(tuned)
    tuned_processes = int(tuned_args[tuned_args.index("--processes") + 1]) if "--processes" in tuned_args else cores
    celery = [str(BIN / "celery"), "-A", "worker_apps.celery_app", "worker", "-Q", QUEUE]
    raw = [sys.executable, "-m", "worker_apps.raw_consumer"]
    return [
        Framework(OURS, f"defaults, no flags: {cores} processes (one per core) x 8 task threads, prefetch "
                  f"{DEFAULT_PREFETCH} per process, level info without the per-task lines", ours,
                  publish_amqptasks, cores, "the broker (delay tiers)", is_ours=True),
        Framework(CELERY, f"defaults, no flags: prefork pool, concurrency {cores} (= cores), prefetch multiplier 4 "
                  f"(prefetch {4 * cores}), gossip/mingle/heartbeat on, level warning; `task_acks_late=True`",
                  celery, publish_celery, 1, "the worker's memory (ETA tasks)"),
        Framework(DRAMATIQ, f"defaults, no flags: {cores} processes (= cores) x 8 threads, prefetch 16 per process "
                  "(delay queue: 8,000 per process)", [str(BIN / "dramatiq"), "worker_apps.dramatiq_app"],
                  publish_dramatiq, cores, "the worker's memory (delay queue)"),
        Framework(TUNED, f"`{tuned}`, otherwise defaults", [*ours, *tuned_args], publish_amqptasks,
                  tuned_processes, "the broker (delay tiers)", is_ours=True, table="tuned"),
        Framework(CEILING, "one raw pika consumer (`worker_apps/raw_consumer.py`): prefetch 1,000, counts each "
                  "delivery and multi-acks every 100, nothing else", raw, publish_amqptasks, 1, "—",
                  table="tuned", drain_only=True),
    ]  # fmt: skip


# --- measurements -------------------------------------------------------------------------------------------


@dataclass
class Result:
    framework: Framework
    drain_rate: float | None = None
    drain_cpu: float | None = None  # CPU seconds per 10,000 tasks
    drains: list[float] = field(default_factory=list)  # each trial's drain rate (--repeat)
    drain_cpus: list[float] = field(default_factory=list)
    e2e_rate: float | None = None
    e2e_cpu: float | None = None
    e2e_publish_rate: float | None = None
    publisher: str = ""
    idle: tuple[int, int] | None = None  # (RSS, PSS) in bytes
    loaded: tuple[int, int] | None = None
    delayed: int = 0
    held: int | None = None  # delayed messages unacknowledged, i.e. in the worker's hands
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass
class Bench:
    broker: BrokerURL
    mgmt: ManagementClient

    @contextmanager
    def row(self, fw: Framework, what: str) -> Iterator[tuple[BrokerURL, Counts, WorkerProcess]]:
        """A fresh vhost, a fresh count directory, and the worker (not started), stopped at the end."""
        say(f"{fw.name}: {what} ...")
        began = time.monotonic()
        with fresh_vhost(self.mgmt, self.broker) as url, tempfile.TemporaryDirectory(prefix="amqptasks-bench-") as tmp:
            path = os.pathsep.join(filter(None, [str(BENCH_DIR), os.environ.get("PYTHONPATH")]))
            env = {**os.environ, "BENCH_BROKER_URL": url.to_url(), COUNT_DIR_ENV: tmp, "PYTHONPATH": path}
            worker = WorkerProcess(fw.command, env, Path(tmp) / "worker.log")
            try:
                yield url, Counts(Path(tmp)), worker
            finally:
                stopping = time.monotonic()
                worker.stop()
                say(f"  {time.monotonic() - began:.1f} s, of which {time.monotonic() - stopping:.1f} s stopping it")

    def wait_ready(self, url: BrokerURL, fw: Framework, worker: WorkerProcess, timeout: float = 60.0) -> None:
        """Until the worker consumes ``bench`` (one consumer per process), then a moment to settle."""
        deadline = time.monotonic() + timeout
        connection = open_blocking(url, connection_name="amqptasks bench probe")
        try:
            while True:
                worker.check_alive()
                channel = connection.channel()
                try:
                    consumers = int(channel.queue_declare(QUEUE, passive=True).method.consumer_count)
                    channel.close()
                except Exception:  # not declared yet: the broker closed the channel
                    consumers = 0
                if consumers >= fw.consumers:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"worker not ready after {timeout:g} s:\n{worker.log_tail()}")
                time.sleep(0.1)
        finally:
            connection.close()
        time.sleep(2.0)  # start-up work after the first consume (Celery's mingle, pool processes, imports)

    def drain(self, fw: Framework, n: int, result: Result) -> None:
        """(a) n tasks queued first, then the worker starts: n / (last completion - first completion)."""
        with self.row(fw, f"(a) drain {n:,}") as (url, counts, worker):
            fw.publish(url, n, False, False)
            depth = wait_for_depth(url, n)
            if depth != n:
                raise RuntimeError(f"the queue holds {depth:,} messages before the drain, expected {n:,}")
            worker.start()
            first: list[tuple[float, int]] = []
            counts.wait_for(n, worker, on_first=lambda done: first.append((cpu_seconds(worker.pid), done)))
            cpu_end = cpu_seconds(worker.pid)
            cpu_start, done_before = first[0]
            result.drains.append(n / ((counts.last_ns() - counts.first_ns()) / 1e9))
            # (c): CPU from the first completions seen (start-up excluded) to the last
            result.drain_cpus.append((cpu_end - cpu_start) / (n - done_before) * 10_000)
            # --repeat: the median of the trials (interleaved with the other frameworks' trials)
            result.drain_rate = statistics.median(result.drains)
            result.drain_cpu = statistics.median(result.drain_cpus)
            self._check_count(counts, n, "drain", result)

    def end_to_end(self, fw: Framework, n: int, result: Result) -> None:
        """(b) the worker is up and idle; one process publishes n: n / (last completion - first publish)."""
        with self.row(fw, f"(b) end to end {n:,}") as (url, counts, worker):
            worker.start()
            self.wait_ready(url, fw, worker)
            cpu_start = cpu_seconds(worker.pid)
            t0 = time.time_ns()
            result.publisher = fw.publish(url, n, False, True)
            published = time.time_ns()
            counts.wait_for(n, worker)
            cpu_end = cpu_seconds(worker.pid)
            result.e2e_rate = n / ((counts.last_ns() - t0) / 1e9)
            result.e2e_publish_rate = n / ((published - t0) / 1e9)
            result.e2e_cpu = (cpu_end - cpu_start) / n * 10_000
            self._check_count(counts, n, "end to end", result)

    @staticmethod
    def _check_count(counts: Counts, n: int, what: str, result: Result) -> None:
        time.sleep(0.5)  # a duplicate would show up late
        if counts.total() != n:
            result.errors.append(f"{what}: counted {counts.total():,} completions for {n:,} tasks")

    def _watched_counts(self, vhost: str) -> tuple[int, int]:
        """(ready, unacknowledged) over the task and delay queues (the management API refreshes every 5 s)."""
        ready = unacked = 0
        for queue in self.mgmt.list_queues(vhost):
            if str(queue.get("name", "")).startswith((QUEUE, "amqptasks.delay.")):  # not Celery's event queues
                ready += int(queue.get("messages_ready") or 0)
                unacked += int(queue.get("messages_unacknowledged") or 0)
        return ready, unacked

    def delayed(self, fw: Framework, n: int, wait_s: float, result: Result) -> None:
        """(d) RSS of the idle worker, then with n tasks delayed by an hour pending."""
        with self.row(fw, f"(d) idle, then {n:,} delayed") as (url, counts, worker):
            worker.start()
            self.wait_ready(url, fw, worker)
            result.idle = memory(worker.pid)
            started = time.monotonic()
            fw.publish(url, n, True, True)
            say(f"  published {n:,} delayed tasks in {time.monotonic() - started:.1f} s")
            # Settled once the broker's counts and the worker's RSS (in 4 MiB steps) stop changing for 12 s.
            state: tuple[tuple[int, int], int] | None = None
            stable_since, deadline = time.monotonic(), time.monotonic() + wait_s
            while time.monotonic() < deadline:
                worker.check_alive()
                now = (self._watched_counts(url.vhost), memory(worker.pid)[0] >> 22)
                if now != state:
                    state, stable_since = now, time.monotonic()
                elif time.monotonic() - stable_since > 12:
                    break
                time.sleep(1.0)
            else:
                result.notes.append(f"after {wait_s:g} s it was still taking delayed messages in")
            result.loaded = memory(worker.pid)
            result.delayed, result.held = n, state[0][1] if state else None
            if result.held and result.idle:
                per = (result.loaded[0] - result.idle[0]) / result.held
                result.notes.append(f"RSS grew {(result.loaded[0] - result.idle[0]) / 2**20:,.1f} MiB for "
                                    f"{result.held:,} held delayed messages: {per / 1024:.1f} KiB each")  # fmt: skip
            if counts.total():
                result.errors.append(f"delayed: {counts.total():,} delayed tasks ran early")


# --- the table ----------------------------------------------------------------------------------------------


def _n(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _mib(value: tuple[int, int] | None) -> str:
    return "—" if value is None else f"{value[0] / 2**20:,.0f} ({value[1] / 2**20:,.0f})"


def markdown_table(results: list[Result]) -> str:
    lines = [
        "| framework | (a) drain, msgs/s | (b) end to end, msgs/s | (c) CPU s / 10k, drain | (c) CPU s / 10k, "
        "end to end | (d) RSS idle, MiB (PSS) | (d) RSS, delayed pending, MiB (PSS) | (d) delayed: sent, held by "
        "the worker | ok |",
        "|---|---:|---:|---:|---:|---:|---:|---|:---:|",
    ]
    for r in results:
        delayed = f"{r.delayed:,}, {r.held or 0:,}" if r.delayed else "—"
        lines.append(
            f"| {r.framework.name} | {_n(r.drain_rate)} | {_n(r.e2e_rate)} | {_n(r.drain_cpu, 2)} "
            f"| {_n(r.e2e_cpu, 2)} | {_mib(r.idle)} | {_mib(r.loaded)} | {delayed} | {'✗' if r.errors else '✓'} |"
        )
    return "\n".join(lines)


def ratios(results: list[Result]) -> list[str]:
    by_name = {r.framework.name: r for r in results}
    lines = []
    for ours_name in (OURS, TUNED):
        for theirs_name, target in ((DRAMATIQ, 1.5), (CELERY, 3.0)):
            ours, theirs = by_name.get(ours_name), by_name.get(theirs_name)
            if ours is None or theirs is None:
                continue
            parts = [
                f"{label} {a / b:.2f}x ({'met' if a / b >= target else 'NOT met'})"
                for label, a, b in (
                    ("(a) drain", ours.drain_rate, theirs.drain_rate),
                    ("(b) end to end", ours.e2e_rate, theirs.e2e_rate),
                )
                if a and b
            ]
            if parts:
                lines.append(f"{ours_name} vs {theirs_name} (target ≥ {target:g}x): {', '.join(parts)}")
    ceiling = by_name.get(CEILING)
    for name in (TUNED, OURS):
        r = by_name.get(name)
        if ceiling is not None and r is not None and ceiling.drain_rate and r.drain_rate:
            share = r.drain_rate / ceiling.drain_rate
            target = " (target ≥ 50%: " + ("met)" if share >= 0.5 else "NOT met)") if name == TUNED else ""
            lines.append(f"{name}: (a) drain {share:.0%} of the {CEILING}{target}")
    return lines


def source_state() -> str:
    """Which amqptasks was measured: the commit and whether the package had uncommitted changes, or where it was
    imported from when that is not this repository (a snapshot on PYTHONPATH, see bench/README.md)."""
    import amqptasks

    repo, package = BENCH_DIR.parent, Path(amqptasks.__file__).resolve().parent
    if package != repo / "amqptasks":
        return f"amqptasks imported from {package}"
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--", "amqptasks"],
                               capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "amqptasks (commit unknown)"
    return f"amqptasks at {head}" + (" + uncommitted changes in amqptasks/" if dirty else "")


def run_table(bench: Bench, args: argparse.Namespace) -> int:
    chosen = frameworks(args.tuned)
    if args.only:
        names = {name.strip() for name in args.only.split(",")}
        chosen = [fw for fw in chosen if fw.name in names]
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    load_before = os.getloadavg()[0]
    results = [Result(fw) for fw in chosen]
    # Measurement by measurement, every framework in turn: the ratios compare runs minutes apart, not a quarter hour.
    steps: list[tuple[str, Result, Callable[[], None]]] = []
    for _ in range(args.repeat):  # trials interleaved: a burst of load on the machine hits every framework
        for r in results:
            steps.append(("drain", r, functools.partial(bench.drain, r.framework, args.n, r)))
    for r in (r for r in results if not r.framework.drain_only):
        steps.append(("e2e", r, functools.partial(bench.end_to_end, r.framework, args.n, r)))
    for r in (r for r in results if not r.framework.drain_only):
        k = args.delayed if r.framework.is_ours or args.delayed_theirs is None else args.delayed_theirs
        if k:
            steps.append(("delayed", r, functools.partial(bench.delayed, r.framework, k, args.delayed_wait, r)))
    for name, result, step in steps:
        if name in skip:
            continue
        try:
            step()
        except Exception as exc:  # one failed measurement must not lose the others
            result.errors.append(f"{name}: {exc}")
            say(f"  {name} failed: {exc}")

    for table, title in (("defaults", "Defaults vs defaults (no flags for any framework)"),
                         ("tuned", "Tuned, beside the broker's ceiling")):  # fmt: skip
        rows = [r for r in results if r.framework.table == table]
        if rows:
            print(f"{title}:\n\n{markdown_table(rows)}\n")
    for line in ratios(results):
        print(line)
    if args.repeat > 1:
        for r in results:
            if r.drains:
                trials = " / ".join(f"{rate:,.0f}" for rate in r.drains)
                print(f"(a) drain, {r.framework.name}: median of {len(r.drains)} trials: {trials} msgs/s")
    for r in results:
        if r.publisher:
            print(f"(b) publisher, {r.framework.name}: {r.publisher}; {_n(r.e2e_publish_rate)} msgs/s while the "
                  "worker ran")  # fmt: skip
    for r in results:
        print(f"settings, {r.framework.name}: {r.framework.settings}; delayed tasks wait in {r.framework.delayed_in}")
    for r in results:
        for note in r.notes:
            print(f"note, {r.framework.name}: {note}")
    for r in results:
        for error in r.errors:
            print(f"ERROR, {r.framework.name}: {error}")
    print(f"machine: {machine(bench.mgmt, bench.broker.host)}; {source_state()}; n = {args.n:,}; "
          f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")  # fmt: skip
    return 1 if any(r.errors for r in results) else 0


# --- where amqptasks' worker spends its time (py-spy) -------------------------------------------------------

#: (category, frame patterns): a main-thread sample goes to the first category with a frame in its stack,
#: scanning from the innermost frame out; samples matching none are the event loop's own work.
PROFILE_CATEGORIES: list[tuple[str, list[str]]] = [
    ("logging: per-task lines (format, lock, write)", [r"\(logging/", r"TaskLog\.", r"TaskProgress\.",
                                                       r"JsonFormatter"]),
    ("send: acks (batched), socket writes", [r"_on_socket_writable", r"_produce \(", r"Acks\.flush",
                                             r"Acks\.settle", r"Worker\._settle"]),
    ("receive: socket reads, AMQP frame parsing (pika)", [r"_on_socket_readable", r"_proto_data_received",
                                                         r"Transport\._hand_over", r"on_message \(.*transport"]),
    ("decode: body and headers to TaskMessage (`from_amqp`)", [r"^from_amqp ", r"^decode \(", r"serialize"]),
    ("find_task: `Signature.bind` of the arguments", [r"^find_task ", r"check_arguments"]),
    ("middleware hooks", [r"Hooks\.run", r"RateLimits", r"TaskLog", r"SignalHooks", r"TaskHooks", r"Results\.",
                          r"FailureRecords"]),
    ("slot: `_slot()`", [r"Worker\._slot"]),
    ("thread hop, loop side: submit, results delivered in batches, self-pipe read",
     [r"Executor\.", r"TaskThreads\.", r"_read_from_self"]),
    ("request: `Request(...)`, headers copied", [r"^request_for "]),
    ("checks: redelivered / expired / early", [r"Admission\."]),
    ("worker's own code: `_on_batch`, `_process`, `_handle`, `_execute`, failures and retries",
     [r"Worker\.", r"Delivery", r"^failed \(", r"^republish \("]),
]  # fmt: skip
LOOP_CATEGORY = "event loop: epoll, running callbacks and task steps"
STARTUP = re.compile(r"_find_and_load|provision|load_app|banner|plan_worker")


def breakdown(raw: Path, n: int, rate: int, cpu_us: float | None = None) -> str:
    """py-spy's raw (collapsed) stacks → µs per message, by category, as a Markdown table. Samples are wall time
    (a thread waiting for the GIL or for a core counts too); with *cpu_us*, the worker's measured CPU per task
    (from /proc), each category also gets its share of that: the per-task CPU budget."""
    patterns = [(name, [re.compile(p) for p in ps]) for name, ps in PROFILE_CATEGORIES]
    loop: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames, samples = stack.split(";"), int(count)
        if any(STARTUP.search(f) for f in frames):
            continue
        if "MainThread" not in frames[0]:
            if "amqptasks-consumer" in frames[0]:
                threads["consumer thread: pika socket reads, frame parsing, acks, waiting for the GIL"] += samples
            elif any(re.search(r"\b(tick|noop) \(", f) for f in frames):
                threads["task body: `noop()`, one `os.write`"] += samples
            elif any(re.search(r"_write_to_self|call_soon_threadsafe", f) for f in frames):
                threads["task threads: a finished batch wakes the loop (self-pipe write)"] += samples
            elif any("_serve (" in f and "threads.py" in f for f in frames):
                threads["task threads: waking up for work, waiting for the GIL"] += samples
            else:
                threads["other threads"] += samples
            continue
        for frame in reversed(frames[1:]):
            hit = next((name for name, ps in patterns if any(p.search(frame) for p in ps)), None)
            if hit:
                loop[hit] += samples
                break
        else:
            loop[LOOP_CATEGORY] += samples
    us = 1e6 / rate / n
    total = sum(loop.values()) + sum(threads.values())

    def cpu(samples: int) -> str:
        return "" if cpu_us is None else f" {cpu_us * samples / total:.1f} |"

    head = "| where | µs per message (samples) | share |" + (" CPU µs per task |" if cpu_us is not None else "")
    lines = [head, "|---|---:|---:|" + ("---:|" if cpu_us is not None else "")]
    for title, counter in (("main thread (the asyncio loop)", loop), ("other threads", threads)):
        for name, samples in counter.most_common():
            lines.append(f"| {name} | {samples * us:.0f} | {100 * samples / total:.0f} % |{cpu(samples)}")
        lines.append(f"| **{title}, total** | **{sum(counter.values()) * us:.0f}** | "
                     f"**{100 * sum(counter.values()) / total:.0f} %** |{cpu(sum(counter.values()))}")  # fmt: skip
    lines.append(f"| **all** | **{total * us:.0f}** | |{cpu(total)}")
    return "\n".join(lines)


def run_profile(bench: Bench, args: argparse.Namespace) -> int:
    """Drain n tasks with amqptasks' default worker (``--burst``) under py-spy, then the per-message breakdown."""
    py_spy = args.py_spy or shutil.which("py-spy")
    if not py_spy:
        say("--profile needs py-spy: pip install py-spy (e.g. pip install --target /tmp/pyspy py-spy), --py-spy PATH")
        return 2
    fw = frameworks(args.tuned)[0]
    raw = Path(args.profile_out)
    rate = 1000
    gil = ["--gil"] if args.gil else []
    spy = [py_spy, "record", "--rate", str(rate), "--nonblocking", "--threads", *gil, "--format", "raw", "-o",
           str(raw), "--"]  # fmt: skip
    with bench.row(fw, f"profile: drain {args.n:,} under py-spy") as (url, counts, worker):
        fw.publish(url, args.n, False, False)
        wait_for_depth(url, args.n)
        worker.command = [*spy, *fw.command, "--processes", "1", "--burst"]
        worker.start()

        def worker_cpu() -> float:  # the worker (py-spy's child), not py-spy itself
            spied = [pid for pid in process_tree(worker.pid) if (_stat(pid) or ["", "0"])[1] == str(worker.pid)]
            return sum(cpu_seconds(pid) for pid in spied)

        first: list[tuple[float, int]] = []
        counts.wait_for(args.n, worker, on_first=lambda done: first.append((worker_cpu(), done)))
        cpu_us = (worker_cpu() - first[0][0]) / (args.n - first[0][1]) * 1e6
        seconds = (counts.last_ns() - counts.first_ns()) / 1e9
        assert worker.proc is not None
        worker.proc.wait(120)  # --burst: the worker exits once the queue stays empty; py-spy then writes
    print(f"amqptasks default worker (one process) under py-spy ({rate} Hz, --nonblocking): {args.n:,} tasks drained "
          f"at {args.n / seconds:,.0f} msgs/s, {cpu_us:.0f} µs of CPU per task (/proc, py-spy's own excluded); "
          f"stacks in {raw}; load average {os.getloadavg()[0]:.1f}\n")  # fmt: skip
    print(breakdown(raw, args.n, rate, cpu_us))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="tasks for (a) drain and (b) end to end [20,000]")
    parser.add_argument("--delayed", type=int, default=100_000,
                        help="(d): tasks with a 1-hour countdown pending; 0 skips (d) [100,000]")  # fmt: skip
    parser.add_argument("--delayed-theirs", type=int,
                        help="(d): the same for Celery and Dramatiq, if it must differ [--delayed]")  # fmt: skip
    parser.add_argument("--delayed-wait", type=float, default=120.0,
                        help="(d): at most this many seconds for the worker to take them in [120]")  # fmt: skip
    parser.add_argument("--tuned", default="--concurrency 4 --prefetch 1000",
                        help="amqptasks worker options of the tuned row [%(default)s]")  # fmt: skip
    parser.add_argument("--repeat", type=int, default=3,
                        help="(a) drain trials per framework, interleaved; the table shows the median [3]")  # fmt: skip
    parser.add_argument("--only", help="comma-separated frameworks to run, e.g. 'amqptasks,Dramatiq'")
    parser.add_argument("--skip", default="", help="comma-separated measurements to skip: drain,e2e,delayed")
    parser.add_argument("--profile", action="store_true", help="only profile amqptasks' default worker (py-spy)")
    parser.add_argument("--py-spy", help="the py-spy executable [on PATH]")
    parser.add_argument("--gil", action="store_true", help="--profile: only samples holding the GIL (CPU, not waits)")
    parser.add_argument("--profile-out", default="amqptasks-worker.pyspy.txt", help="raw stacks [%(default)s]")
    parser.add_argument("--broker", default=os.environ.get(ENV_BROKER_URL) or DEFAULT_BROKER_URL)
    args = parser.parse_args(argv)
    if args.n < 1 or args.delayed < 0:
        parser.error("--n must be at least 1, --delayed at least 0")
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("pika", "aio_pika", "aiormq", "amqptasks"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    broker = BrokerURL.parse(args.broker)
    # Deleting a vhost that holds 100,000 persistent messages takes the broker up to a minute.
    bench = Bench(broker, ManagementClient.for_broker(broker, timeout=180))
    return run_profile(bench, args) if args.profile else run_table(bench, args)


if __name__ == "__main__":
    sys.exit(main())
