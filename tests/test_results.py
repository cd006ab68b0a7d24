"""Task results on a real broker: rpc:// (direct reply-to) and redis://, states, exceptions without pickle."""

from __future__ import annotations

import asyncio
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
from amqptasks.errors import AmqpTasksError
from amqptasks.results.backend import ResultBackend
from amqptasks.results.exceptions import TaskError, exception_payload, rebuild
from amqptasks.worker import request as request_context
from tests.worker_helpers import YAML, make_app, run_worker

pytestmark = pytest.mark.broker

RPC_YAML = YAML + "results: {backend: 'rpc://'}\n"
REDIS_URL = "redis://127.0.0.1:6379/0"
REDIS_YAML = YAML + f"results: {{backend: '{REDIS_URL}', result_expires: 120}}\n"


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


def test_redis_backend_stores_the_result_with_its_expiry(vhost: BrokerURL) -> None:
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.skip(f"no Redis at {REDIS_URL}")
    app = make_app(vhost, REDIS_YAML)
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
    key = f"amqptasks-result-{result.id}"
    assert 0 < client.ttl(key) <= 120
    assert progress[-1] == "SUCCESS" and set(progress) <= {"PROGRESS", "SUCCESS"}
    assert not client.exists(f"amqptasks-result-{ignored.id}")
    result.forget()
    assert not client.exists(key)


# --- without a broker ------------------------------------------------------------------------------------------


def test_an_exception_of_a_module_not_allowed_is_never_imported(tmp_path: Path) -> None:
    # Given a module on sys.path that would be imported by an importlib-based rebuild
    name = f"evil_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("import os\nos.environ['PWNED'] = '1'\nclass Bad(Exception): pass\n")
    sys.path.insert(0, str(tmp_path))
    try:
        payload = {"type": f"{name}.Bad", "message": "nope", "args": ["nope"], "traceback": "Traceback..."}
        # When results naming it are rebuilt, even as the task's own module
        generic = rebuild(payload, task_module="tasks")
        own_module_not_imported = rebuild(payload, task_module=name)
    finally:
        sys.path.remove(str(tmp_path))
    # Then nothing was imported; a generic TaskError carries what is known
    assert name not in sys.modules
    for exc in (generic, own_module_not_imported):
        assert isinstance(exc, TaskError) and isinstance(exc, AmqpTasksError)
        assert (exc.type_name, exc.message, exc.traceback) == (f"{name}.Bad", "nope", "Traceback...")


def test_builtin_and_task_module_exceptions_are_rebuilt() -> None:
    assert isinstance(rebuild(exception_payload(KeyError("k"))), KeyError)
    assert isinstance(rebuild(exception_payload(PaymentDeclined("x")), task_module=__name__), PaymentDeclined)
    assert isinstance(rebuild(exception_payload(PaymentDeclined("x")), task_module="other"), TaskError)
    assert isinstance(rebuild({"type": "builtins.SystemExit", "message": "0", "args": [0]}), TaskError)


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
        with pytest.raises(TaskRevoked):
            later.get(timeout=5)
    assert (expired.state, later.state) == ("EXPIRED", "REVOKED")
    assert expired.ready() and later.ready()
