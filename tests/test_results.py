"""Task results on a real broker: rpc:// (direct reply-to) and redis://, states, exceptions without pickle."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from amqptasks import App, AsyncResult
from amqptasks.broker import BrokerURL
from amqptasks.canvas import chord, group
from amqptasks.errors import AmqpTasksError
from amqptasks.result import GroupResult
from amqptasks.results.backend import ResultBackend, StateBook
from amqptasks.results.exceptions import TaskError, exception_payload, rebuild
from amqptasks.worker import request as request_context
from amqptasks.worker.middleware import Middleware
from tests.worker_helpers import YAML, make_app, run_worker

pytestmark = pytest.mark.broker

RPC_YAML = YAML + "results: {backend: 'rpc://'}\n"


def redis_yaml(url: str) -> str:
    return YAML + f"results: {{backend: '{url}', result_expires: 120}}\n"


class PaymentDeclined(Exception):
    """Defined in the tasks' module: rebuilt as itself."""


@contextmanager
def worker_running(app: App, **settings: Any) -> Iterator[None]:
    """A worker consuming 'work' in a background thread while the test publishes and waits for results."""
    stop, failures = threading.Event(), []

    def work() -> None:
        try:
            run_worker(app, until=stop.is_set, timeout=120, **settings)
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(30)
        app.close()
    assert not failures, failures


def define(app: App) -> dict[str, Any]:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def fail(text: str) -> None:
        raise ValueError(f"boom: {text}")

    @app.task
    def decline(amount: int) -> None:
        raise PaymentDeclined(f"{amount} declined")

    @app.task(bind=True)
    def progress(self: Any, steps: int) -> str:
        for step in range(steps):
            self.update_state(state="PROGRESS", meta={"step": step})
        return "done"

    @app.task(bind=True, max_retries=2)
    def flaky(self: Any) -> str:
        if self.request.retries == 0:
            self.retry(countdown=0.3)  # through the delay tiers: RETRY is reported before the retried run ends
        return f"ok after {self.request.retries}"

    @app.task(track_started=True)
    def tracked() -> int:
        return 1

    @app.task(ignore_result=True)
    def fire_and_forget() -> int:
        return 1

    return {f.name.rsplit(".", 1)[-1]: f for f in (add, fail, decline, progress, flaky, tracked, fire_and_forget)}


@pytest.fixture
def rpc_app(vhost: BrokerURL) -> App:
    return make_app(vhost, RPC_YAML)


def test_delay_get_returns_the_result_through_direct_reply_to(rpc_app: App) -> None:
    # Given a worker and an app whose results come back by rpc://
    tasks = define(rpc_app)
    with worker_running(rpc_app):
        # When a task is published and waited for
        result = tasks["add"].delay(2, 3)
        value = result.get(timeout=5)
    # Then the caller has its result and final state
    assert value == 5
    assert (result.state, result.ready(), result.successful(), result.failed()) == ("SUCCESS", True, True, False)
    assert result.result == 5 and result.date_done is not None


def test_a_failed_task_raises_its_exception_in_get(rpc_app: App) -> None:
    tasks = define(rpc_app)
    with worker_running(rpc_app):
        failed, declined = tasks["fail"].delay("card"), tasks["decline"].delay(12)
        with pytest.raises(ValueError, match="boom: card"):
            failed.get(timeout=5)
        with pytest.raises(PaymentDeclined, match="12 declined"):
            declined.get(timeout=5)
    # Then without propagate the exception is returned; its remote traceback comes along
    assert isinstance(failed.get(timeout=1, propagate=False), ValueError)
    assert failed.state == "FAILURE" and failed.failed()
    assert failed.traceback is not None and "boom: card" in failed.traceback


def test_update_state_and_retries_reach_on_message(rpc_app: App) -> None:
    tasks = define(rpc_app)
    seen: list[tuple[str, Any]] = []
    with worker_running(rpc_app):
        value = tasks["progress"].delay(3).get(timeout=5, on_message=lambda m: seen.append((m["status"], m["result"])))
        retried: list[str] = []
        again = tasks["flaky"].delay().get(timeout=5, on_message=lambda m: retried.append(m["status"]))
        started: list[str] = []
        tasks["tracked"].delay().get(timeout=5, on_message=lambda m: started.append(m["status"]))
    assert value == "done"
    assert seen == [("PROGRESS", {"step": 0}), ("PROGRESS", {"step": 1}), ("PROGRESS", {"step": 2}),
                    ("SUCCESS", "done")]  # fmt: skip
    assert (retried, again) == (["RETRY", "SUCCESS"], "ok after 1")
    assert started == ["STARTED", "SUCCESS"]


def test_adelay_and_aget(rpc_app: App) -> None:
    tasks = define(rpc_app)

    async def main() -> int:
        result = await tasks["add"].adelay(20, 22)
        value: int = await result.aget(timeout=5)
        await rpc_app.aclose()
        return value

    with worker_running(rpc_app):
        assert asyncio.run(main()) == 42


def test_get_times_out_with_a_clear_error_when_no_worker_runs(rpc_app: App) -> None:
    tasks = define(rpc_app)
    try:
        result = tasks["add"].delay(1, 1)
        started = time.monotonic()
        with pytest.raises(TimeoutError, match=r"no result within 0.3 s \(is a worker consuming"):
            result.get(timeout=0.3)
        assert time.monotonic() - started < 2
        assert result.state == "PENDING" and not result.ready()
    finally:
        rpc_app.close()


def test_ignored_results_are_not_sent(rpc_app: App) -> None:
    tasks = define(rpc_app)
    with worker_running(rpc_app):
        declared = tasks["fire_and_forget"].delay()
        per_call = tasks["add"].apply_async((1, 2), ignore_result=True)
        tasks["add"].delay(0, 0).get(timeout=5)  # published after both: once it is back, they ran
    for result in (declared, per_call):
        with pytest.raises(AmqpTasksError, match="no result to wait for"):
            result.get(timeout=1)


def test_redis_backend_stores_the_result_with_its_expiry(vhost: BrokerURL, redis_url: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    app = make_app(vhost, redis_yaml(redis_url))
    tasks = define(app)
    with worker_running(app):
        result = tasks["add"].delay(2, 3)
        assert result.get(timeout=5) == 5
        with pytest.raises(ValueError, match="boom: x"):
            tasks["fail"].delay("x").get(timeout=5)
        progress: list[str] = []
        tasks["progress"].delay(1).get(timeout=5, interval=0.01, on_message=lambda m: progress.append(m["status"]))
        ignored = tasks["add"].apply_async((1, 1), ignore_result=True)
        tasks["add"].delay(0, 0).get(timeout=5)
    key = f"celery-task-meta-{result.id}"
    assert 0 < client.ttl(key) <= 120
    assert progress[-1] == "SUCCESS" and set(progress) <= {"PROGRESS", "SUCCESS"}
    assert not client.exists(f"celery-task-meta-{ignored.id}")
    result.forget()
    assert not client.exists(key)


def test_a_late_retry_state_never_replaces_the_outcome_of_the_retry(vhost: BrokerURL, redis_url: str) -> None:
    import redis

    # Given a task that fails once and is retried at once, and a middleware whose after_retry is slow: the
    # retry has run (and stored SUCCESS) before the first run's after_retry hooks are over
    class SlowAfterRetry(Middleware):
        async def after_retry(self, delivery: Any, exc: BaseException | None, countdown: float) -> None:
            await asyncio.sleep(0.5)

    app = make_app(vhost, redis_yaml(redis_url))
    runs: list[int] = []

    @app.task(name="r.flaky", bind=True)
    def flaky(self: Any) -> str:
        runs.append(self.request.retries)
        if len(runs) == 1:
            raise self.retry(countdown=0)
        return "done"

    with worker_running(app, middleware=[SlowAfterRetry()]):
        result = flaky.delay()
        assert result.get(timeout=5) == "done"
        time.sleep(1.0)  # the first run's hooks are over now
    # Then the stored state is still the retry's SUCCESS, not RETRY
    stored = json.loads(redis.Redis.from_url(redis_url).get(f"celery-task-meta-{result.id}") or b"{}")
    assert stored.get("status") == "SUCCESS", stored
    assert runs == [0, 1]


def define_family(app: App) -> dict[str, Any]:
    """Tasks that publish tasks while they run: their children."""

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def tsum(values: list[int]) -> int:
        return sum(values)

    @app.task(bind=True)
    def whoami(self: Any) -> list[str | None]:
        return [self.request.parent_id, self.request.root_id]

    @app.task
    def relay() -> str:
        return whoami.delay().id

    @app.task
    def spawn() -> list[Any]:
        relayed = relay.delay()
        flow = (add.s(1, 1) | add.s(2)).delay()
        fan = group(add.s(i, i) for i in range(2)).delay()
        joined = chord([add.s(1, 1), add.s(2, 2)], tsum.s()).delay()
        assert flow.parent is not None and joined.parent is not None
        return [relayed.id, flow.parent.id, [fan.id, [r.id for r in fan]], [joined.id, joined.parent.id]]

    @app.task
    async def aspawn() -> str:
        return (await add.adelay(1, 2)).id

    return {f.name.rsplit(".", 1)[-1]: f for f in (add, tsum, whoami, relay, spawn, aspawn)}


def test_children_are_what_a_task_published_while_it_ran(rpc_app: App) -> None:
    tasks = define_family(rpc_app)
    with worker_running(rpc_app, concurrency=4):
        # When tasks publish a task, a chain, a group and a chord (sync) or a task (async) while they run
        spawned, asynchronous = tasks["spawn"].delay(), tasks["aspawn"].delay()
        relayed, first, (fan, members), (joined, header) = spawned.get(timeout=10)
        async_child = asynchronous.get(timeout=10)
        # and a chain runs from here
        flow = (tasks["add"].s(1, 1) | tasks["add"].s(2)).delay()
        assert flow.get(timeout=10) == 4
    # Then their final states list them: a group as a GroupResult, a chord as its callback's result
    children = spawned.children
    assert [type(c) for c in children] == [AsyncResult, AsyncResult, GroupResult, AsyncResult]
    assert [c.id for c in children] == [relayed, first, fan, joined]
    assert [r.id for r in children[2]] == members
    assert isinstance(children[3].parent, GroupResult) and children[3].parent.id == header
    assert [c.id for c in asynchronous.children] == [async_child]
    # And the next task of a chain is a child of the one before it, and can be waited for through it
    assert isinstance(flow.parent, AsyncResult) and flow.parent.children == [flow]
    assert flow.parent.children[0].get(timeout=1) == 4 and flow.children == []


def test_children_are_recorded_in_a_process_pool_child_too(vhost: BrokerURL, redis_url: str) -> None:
    # Given a worker whose sync tasks run in child processes, and the redis backend
    app = make_app(vhost, redis_yaml(redis_url))
    tasks = define_family(app)
    with worker_running(app, pool="processes", concurrency=2):
        assert tasks["add"].delay(0, 0).get(timeout=20) == 0  # the worker and its children are up
        # When a task publishes a task, a chain, a group and a chord from its child process
        spawned = tasks["spawn"].delay()
        relayed, first, (fan, members), (joined, _header) = spawned.get(timeout=20)
        # Then its final state lists them, as with threads
        children = spawned.children
        assert [c.id for c in children] == [relayed, first, fan, joined]
        assert [r.id for r in children[2]] == members
        assert children[3].get(timeout=20) == 6
    app.close()


def test_children_results_are_readable_with_redis_and_know_their_parent_and_root(
    vhost: BrokerURL, redis_url: str
) -> None:
    app = make_app(vhost, redis_yaml(redis_url))
    tasks = define_family(app)
    with worker_running(app, concurrency=4):
        # When a task publishes a task (that publishes one), a chain, a group and a chord
        spawned = tasks["spawn"].delay()
        spawned.get(timeout=10)
        relayed, first, fan, joined = spawned.children
        # Then each child's result is there for any process to read
        assert isinstance(fan, GroupResult) and fan.get(timeout=10) == [0, 2]
        assert joined.get(timeout=20) == 6
        assert first.get(timeout=10) == 2 and first.children[0].get(timeout=10) == 4
        # and a grandchild's parent is its publisher, its root the task the client published
        relayed.get(timeout=10)
        assert relayed.children[0].get(timeout=10) == [relayed.id, spawned.id]
    app.close()


# --- without a broker ------------------------------------------------------------------------------------------


def test_a_process_keeps_a_bounded_number_of_final_states_and_a_result_keeps_its_own() -> None:
    # Given a state book that keeps two final states, behind a backend, and a result read once
    book = StateBook(max_final=2)

    class BookBackend(ResultBackend):
        def peek(self, task_id: str) -> dict[str, Any] | None:
            return book.latest(task_id)

        def wait(self, task_id: str, timeout: float | None, interval: float, on_message: Any) -> dict[str, Any]:
            return book.wait(task_id, timeout, on_message)

    backend = BookBackend()
    first = AsyncResult("t1", backend=backend)
    book.add({"task_id": "t1", "status": "SUCCESS", "result": 1})
    assert first.get(timeout=0) == 1
    # When more final states arrive than the book keeps (and one task is still running)
    book.add({"task_id": "running", "status": "PROGRESS", "result": {"done": 1}})
    for n in (2, 3):
        book.add({"task_id": f"t{n}", "status": "SUCCESS", "result": n})
    # Then the oldest final state is gone from the book, not the running task's, and the result still knows its own
    assert book.latest("t1") is None and book.latest("t3") is not None
    assert AsyncResult("running", backend=backend).state == "PROGRESS"
    assert first.state == "SUCCESS" and first.get(timeout=0) == 1
    assert AsyncResult("t1", backend=backend).state == "PENDING"  # a fresh handle: forgotten, as documented


def test_an_exception_of_a_module_not_allowed_is_never_imported(tmp_path: Path) -> None:
    # Given a module on sys.path that would be imported by an importlib-based rebuild
    name = f"evil_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("import os\nos.environ['PWNED'] = '1'\nclass Bad(Exception): pass\n")
    sys.path.insert(0, str(tmp_path))
    try:
        payload = {"exc_type": "Bad", "exc_message": ["nope"], "exc_module": name}
        # When results naming it are rebuilt, even as the task's own module (and in the pre-0.2 form)
        generic = rebuild(payload, task_module="tasks", traceback="Traceback...")
        own_module_not_imported = rebuild(payload, task_module=name, traceback="Traceback...")
        legacy = {"type": f"{name}.Bad", "message": "nope", "args": ["nope"], "traceback": "Traceback..."}
        legacy_not_imported = rebuild(legacy, task_module=name)
    finally:
        sys.path.remove(str(tmp_path))
    # Then nothing was imported; a generic TaskError carries what is known
    assert name not in sys.modules
    for exc in (generic, own_module_not_imported, legacy_not_imported):
        assert isinstance(exc, TaskError) and isinstance(exc, AmqpTasksError)
        assert (exc.type_name, exc.message, exc.traceback) == (f"{name}.Bad", "nope", "Traceback...")


def test_builtin_and_task_module_exceptions_are_rebuilt() -> None:
    assert isinstance(rebuild(exception_payload(KeyError("k"))), KeyError)
    assert isinstance(rebuild(exception_payload(PaymentDeclined("x")), task_module=__name__), PaymentDeclined)
    assert isinstance(rebuild(exception_payload(PaymentDeclined("x")), task_module="other"), TaskError)
    assert isinstance(rebuild({"exc_type": "SystemExit", "exc_message": [0], "exc_module": "builtins"}), TaskError)
    assert exception_payload(ValueError("kaboom", 2)) == {
        "exc_type": "ValueError", "exc_message": ["kaboom", 2], "exc_module": "builtins"
    }  # fmt: skip


class _Done(ResultBackend):
    def wait(self, task_id: str, timeout: float | None, interval: float, on_message: Any) -> dict[str, Any]:
        return {"task_id": task_id, "status": "SUCCESS", "result": 1}


def test_get_inside_a_running_task_warns_of_deadlocks() -> None:
    token = request_context.current.set(object())  # type: ignore[arg-type]
    try:
        with pytest.warns(RuntimeWarning, match="can deadlock"):
            assert AsyncResult("id", "t", backend=_Done()).get() == 1
    finally:
        request_context.current.reset(token)


def test_an_expired_task_is_reported_expired_and_a_revoked_one_revoked(rpc_app: App) -> None:
    from amqptasks import control
    from amqptasks.errors import TaskExpired, TaskRevoked

    tasks = define(rpc_app)
    with worker_running(rpc_app):
        # Given a task whose expiry passes before it is due, and one revoked while it waits
        expired = tasks["add"].apply_async((1, 1), countdown=0.5, expires=0.2)
        later = tasks["add"].apply_async((2, 2), countdown=1.0)
        deadline = time.monotonic() + 5
        while not control.revoke(rpc_app, later.id, timeout=0.3) and time.monotonic() < deadline:
            pass  # until the worker is up to hear it
        # Then neither runs, and get() says why
        with pytest.raises(TaskExpired):
            expired.get(timeout=5)
        with pytest.raises(TaskRevoked) as revoked:
            later.get(timeout=5)
        assert not isinstance(revoked.value, TaskExpired)
    # Both stored as Celery stores them (REVOKED, so a Celery client's get() ends too); the reason tells them apart
    assert (expired.state, later.state) == ("REVOKED", "REVOKED")
    assert expired.ready() and later.ready()
