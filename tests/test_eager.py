"""Eager calls: ``Task.apply()`` runs a task here and now and returns an EagerResult, as Celery's does; a bound task
called like a function has a ``self.request``. No broker is involved (pure logic: the task's own code)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from amqptasks import App
from amqptasks.errors import MaxRetriesExceeded, Reject
from amqptasks.tasks.task import Task


@pytest.fixture
def app() -> App:
    return App(broker_url="memory://eager-tests")


def test_apply_returns_the_result_at_once(app: App) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    result = add.apply((2, 3))
    assert result.get() == 5
    assert (result.state, result.status, result.result, result.traceback) == ("SUCCESS", "SUCCESS", 5, None)
    assert result.ready() and result.successful() and not result.failed()
    assert add.apply(kwargs={"x": 1, "y": 1}).get() == 2


def test_apply_checks_arguments_as_the_function_would(app: App) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    with pytest.raises(TypeError, match="add"):
        add.apply((1,))


def test_a_failure_is_kept_in_the_result_and_raised_by_get(app: App) -> None:
    @app.task
    def boom() -> None:
        raise ValueError("no")

    result = boom.apply()
    assert result.state == "FAILURE" and result.failed()
    assert isinstance(result.result, ValueError)
    assert "ValueError: no" in (result.traceback or "")
    with pytest.raises(ValueError, match="no"):
        result.get()
    assert isinstance(result.get(propagate=False), ValueError)
    with pytest.raises(ValueError, match="no"):
        boom.apply(throw=True)


def test_retries_run_again_at_once_until_max_retries_then_fail(app: App) -> None:
    seen: list[tuple[int, bool, str]] = []

    @app.task(bind=True, max_retries=2)
    def flaky(self: Task[Any, Any]) -> None:
        seen.append((self.request.retries, self.request.is_eager, self.request.id))
        self.retry(countdown=3600)

    result = flaky.apply(task_id="fixed-id")
    assert [(r, eager) for r, eager, _ in seen] == [(0, True), (1, True), (2, True)]  # as Celery: 1 + max_retries
    assert {task_id for _, _, task_id in seen} == {"fixed-id"}
    assert result.state == "FAILURE" and isinstance(result.result, MaxRetriesExceeded)


def test_a_retry_that_succeeds_gives_the_later_result(app: App) -> None:
    @app.task(bind=True, max_retries=5)
    def second_time(self: Task[Any, Any]) -> int:
        if self.request.retries < 1:
            self.retry(exc=ConnectionError("flaky"))
        return self.request.retries

    assert second_time.apply().get() == 1


def test_autoretry_for_retries_eagerly_and_fails_with_the_original_error(app: App) -> None:
    calls: list[int] = []

    @app.task(autoretry_for=(KeyError,), max_retries=2)
    def missing() -> None:
        calls.append(1)
        raise KeyError("k")

    result = missing.apply()
    assert len(calls) == 3
    assert result.state == "FAILURE" and isinstance(result.result, KeyError)


def test_retries_option_starts_the_count(app: App) -> None:
    @app.task(bind=True, max_retries=3)
    def count(self: Task[Any, Any]) -> int:
        return self.request.retries

    assert count.apply(retries=2).get() == 2


def test_hooks_of_a_custom_base_run(app: App) -> None:
    events: list[tuple[str, Any]] = []

    class Tracked(Task[Any, Any]):
        def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
            events.append(("success", retval))

        def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
            events.append(("failure", type(exc).__name__))
            assert "OSError: disk" in str(einfo)

        def on_retry(self, exc: BaseException | None, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
            events.append(("retry", type(exc).__name__))

        def after_return(self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
            events.append(("after_return", status))

    @app.task(base=Tracked, autoretry_for=(OSError,), max_retries=1)
    def fails() -> None:
        raise OSError("disk")

    @app.task(base=Tracked)
    def works() -> int:
        return 7

    works.apply()
    fails.apply()
    assert events == [("success", 7), ("after_return", "SUCCESS"), ("retry", "OSError"), ("failure", "OSError"),
                      ("after_return", "FAILURE")]  # fmt: skip


def test_reject_ends_rejected(app: App) -> None:
    @app.task
    def refuses() -> None:
        raise Reject("bad input")

    assert refuses.apply().state == "REJECTED"


def test_calling_a_bound_task_directly_has_a_request(app: App) -> None:
    @app.task(bind=True)
    def describe(self: Task[Any, Any], x: int) -> tuple[Any, ...]:
        return self.request.called_directly, self.request.is_eager, self.request.retries, self.request.args

    assert describe(4) == (True, False, 0, (4,))


def test_retry_of_a_directly_called_task_raises_its_error(app: App) -> None:
    @app.task(bind=True, max_retries=3)
    def flaky(self: Task[Any, Any]) -> None:
        self.retry(exc=ConnectionError("down"))

    with pytest.raises(ConnectionError, match="down"):
        flaky()


def test_async_task_applies_too(app: App) -> None:
    @app.task
    async def double(x: int) -> int:
        return 2 * x

    assert double.apply((21,)).get() == 42


def test_apply_publishes_its_callbacks_and_refuses_unknown_options(tmp_path: Path) -> None:
    from amqptasks.testing import drain, messages

    (tmp_path / "app.yaml").write_text("topology:\n  queues: [{name: work}]\nroutes: [{task: '*', queue: work}]\n")
    app = App.from_config(tmp_path / "app.yaml", broker_url=f"memory://eager-{uuid.uuid4().hex[:8]}")

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def record(value: int) -> int:
        return value

    assert add.apply((2, 3), link=record.s()).get() == 5
    (callback,) = messages(app, "work")
    assert callback.task == record.name and callback.json()[0] == [5]
    drain(app)
    with pytest.raises(TypeError, match="unknown option"):
        add.apply((1, 2), countdown=5)
