"""amqptasks.testing on memory://: drain runs tasks through the worker's real code path in this process, messages()
shows what queues hold, the virtual clock runs countdowns, retries, TTLs and beat entries at once. These are tests of
the testing tool itself, which runs in the test's process by design."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from amqptasks import App, UnroutableError, chain, chord, group
from amqptasks.errors import MaxRetriesExceeded, Reject
from amqptasks.tasks.task import Task
from amqptasks.testing import advance, drain, messages, tick_beat

YAML = """
topology:
  exchanges:
    - {name: tasks, type: direct}
  queues:
    - name: work
      dead_letter: auto
      bindings: [{exchange: tasks, routing_key: work}]
    - name: short
      message_ttl: 5000
      dead_letter: auto
      bindings: [{exchange: tasks, routing_key: short}]
delays: {enabled: true}
routes:
  - task: "*"
    exchange: tasks
    routing_key: work
results: {backend: %s}
"""


def _app(tmp_path: Path, backend: str = "rpc://") -> App:
    path = tmp_path / "app.yaml"
    name = uuid.uuid4().hex[:8]
    path.write_text(YAML % (backend if backend != "memory://" else f"memory://{name}"))
    return App.from_config(path, broker_url=f"memory://{name}")


@pytest.fixture(params=["rpc://", "memory://"])
def app(request: pytest.FixtureRequest, tmp_path: Path) -> App:
    return _app(tmp_path, request.param)


def test_drain_runs_tasks_and_their_results_come_back(app: App) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    results = [add.delay(i, i) for i in range(5)]
    assert [m.task for m in messages(app, "work")] == [add.name] * 5
    outcome = drain(app)
    assert outcome.processed == 5
    assert [r.get(timeout=1) for r in results] == [0, 2, 4, 6, 8]
    assert messages(app, "work") == []


def test_a_failing_task_is_dead_lettered_and_fail_fast_raises_it(app: App) -> None:
    @app.task
    def boom(n: int) -> None:
        raise ValueError(f"bad {n}")

    boom.delay(1)
    with pytest.raises(ValueError, match="bad 1"):
        drain(app)
    (dead,) = messages(app, "work.dlq")
    assert dead.death_reason == "rejected" and dead.json()[0] == [1]
    assert dead.headers["x-first-death-queue"] == "work"

    boom.delay(2)
    boom.delay(3)
    outcome = drain(app, fail_fast=False)
    assert [str(exc) for _, exc in outcome.failures] == ["bad 2", "bad 3"]
    assert len(messages(app, "work.dlq")) == 3


def test_retries_wait_in_the_delay_tiers_until_the_clock_moves(app: App) -> None:
    runs: list[int] = []

    @app.task(bind=True, max_retries=2)
    def flaky(self: Task[Any, Any]) -> None:
        runs.append(self.request.retries)
        self.retry(countdown=3600)

    flaky.delay()
    drain(app)
    assert runs == [0]  # the retry waits an hour in the tiers
    assert messages(app, "work") == []
    started = time.monotonic()
    with pytest.raises(MaxRetriesExceeded):
        drain(app, advance_time=True)
    assert runs == [0, 1, 2]
    assert time.monotonic() - started < 10  # two hours of countdowns, not waited for
    (dead,) = messages(app, "work.dlq")
    assert dead.death_reason == "rejected" and dead.headers["retries"] == 2


def test_queue_ttl_expires_on_the_virtual_clock(app: App) -> None:
    @app.task
    def slow() -> None: ...

    slow.apply_async(routing_key="short")
    advance(app, 4.9)
    assert len(messages(app, "short")) == 1
    advance(app, 0.2)
    assert messages(app, "short") == []
    (dead,) = messages(app, "short.dlq")
    assert dead.death_reason == "expired"


def test_a_message_the_topology_cannot_route_raises(app: App) -> None:
    @app.task
    def anywhere() -> None: ...

    with pytest.raises(UnroutableError):
        anywhere.apply_async(routing_key="nobody")


def test_reject_dead_letters_without_running_again(app: App) -> None:
    @app.task
    def refuses() -> None:
        raise Reject("bad input")

    refuses.delay()
    drain(app)
    assert [m.death_reason for m in messages(app, "work.dlq")] == ["rejected"]


def test_chains_groups_and_chords_run_under_drain(app: App) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def tsum(values: list[int]) -> int:
        return sum(values)

    chained = (add.s(2, 2) | add.s(4) | add.s(10)).delay()
    grouped = group(add.s(i, i) for i in range(4)).delay()
    chorded = chord([add.s(i, 1) for i in range(3)], tsum.s()).delay()
    drain(app, advance_time=True)  # a chord's unlock polls through the delay tiers
    assert chained.get(timeout=1) == 18
    assert grouped.get(timeout=1) == [0, 2, 4, 6]
    assert chorded.get(timeout=1) == 6
    assert chain(add.s(1, 1), add.s(1)).delay().id  # later steps are published, not run here
    assert drain(app).processed == 2


def test_a_revoked_task_does_not_run(app: App) -> None:
    ran: list[str] = []

    @app.task
    def once(tag: str) -> None:
        ran.append(tag)

    revoked = once.delay("revoked")
    once.delay("kept")
    revoked.revoke()
    drain(app)
    assert ran == ["kept"]


def test_a_time_limit_fails_the_task(app: App) -> None:
    @app.task(time_limit=0.2)
    def stuck() -> None:
        time.sleep(0.6)

    stuck.delay()
    with pytest.raises(Exception, match="time limit"):
        drain(app)
    assert [m.death_reason for m in messages(app, "work.dlq")] == ["rejected"]


def test_beat_entries_fall_due_on_the_virtual_clock(app: App) -> None:
    from amqptasks.beat import periodic

    ran: list[str] = []

    @app.task
    def report() -> None:
        ran.append("report")

    periodic(app, "every-minute", report, every=60)
    sent = tick_beat(app, 180)
    assert [name for name, _ in sent] == ["every-minute"] * 3
    assert [m.task_id for m in messages(app, "work")] == [
        f"beat:every-minute:{when.isoformat(timespec='milliseconds')}" for _, when in sent
    ]
    drain(app)
    assert ran == ["report"] * 3


def test_drain_outside_memory_says_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "app.yaml"
    path.write_text("{}")
    app = App.from_config(path, broker_url="amqp://guest:guest@localhost:5672/%2F")
    with pytest.raises(TypeError, match="memory://"):
        drain(app)


def test_an_endless_retry_loop_times_out(app: App) -> None:
    @app.task(bind=True, max_retries=None)
    def forever(self: Task[Any, Any]) -> None:
        self.retry(countdown=0)

    forever.delay()
    with pytest.raises(TimeoutError, match="still busy"):
        drain(app, timeout=0.5)


def test_drain_from_async_code_uses_a_thread_of_its_own(tmp_path: Path) -> None:
    app = _app(tmp_path)

    @app.task
    async def double(x: int) -> int:
        return 2 * x

    async def scenario() -> int:
        result = await double.adelay(4)
        drain(app)  # inside a running loop: the worker gets its own loop, in a thread
        value: int = result.get(timeout=1)
        return value

    assert asyncio.run(scenario()) == 8


def test_expires_counts_on_the_virtual_clock(app: App) -> None:
    ran: list[str] = []

    @app.task
    def offer(tag: str) -> None:
        ran.append(tag)

    advance(app, 3600)  # the clock is already ahead of the wall clock: expiries count from the broker's time
    offer.apply_async(("late",), expires=10)
    offer.apply_async(("in-time",), expires=30)
    advance(app, 20)
    drain(app)
    assert ran == ["in-time"]


def test_a_task_that_keeps_requeueing_itself_runs_until_the_timeout(app: App) -> None:
    runs: list[int] = []

    @app.task
    def again() -> None:
        runs.append(1)
        raise Reject("not now", requeue=True)

    again.delay()
    # Reject(requeue=True) did not crash the worker, so no redelivery is charged against max_redeliveries: it comes
    # back for ever, as on RabbitMQ; drain's timeout ends it, and the message is still there.
    with pytest.raises(TimeoutError, match="still busy"):
        drain(app, timeout=0.5)
    assert len(runs) > 1
    assert [m.task for m in messages(app, "work")] == [again.name]
    assert messages(app, "work.dlq") == []
