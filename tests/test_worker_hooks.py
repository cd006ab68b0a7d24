"""A custom base class's hooks and the app's signals, called by a worker on a real broker."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pytest

from amqptasks import Task
from amqptasks.broker import BrokerURL
from amqptasks.worker.middleware import Middleware
from tests.worker_helpers import celery_headers, get_all, make_app, publish_raw, ready, run_worker

pytestmark = pytest.mark.broker

SIGNALS = ["task_received", "task_prerun", "task_postrun", "task_success", "task_failure", "task_retry",
           "task_rejected"]  # fmt: skip


def test_base_class_hooks_and_signals_follow_each_task(
    vhost: BrokerURL, channel: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a base class recording its hooks, receivers recording every signal, and a receiver that raises
    caplog.set_level(logging.INFO, logger="amqptasks")
    app = make_app(vhost)
    hooks: list[tuple[Any, ...]] = []
    signals: list[tuple[str, str | None]] = []

    class Audited(Task[Any, Any]):
        def on_success(self, retval: Any, task_id: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
            hooks.append(("on_success", task_id, retval, args, dict(kwargs)))

        def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
            hooks.append(("on_failure", task_id, type(exc).__name__))

        def on_retry(self, exc: BaseException | None, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
            hooks.append(("on_retry", task_id, type(exc).__name__))

        def after_return(self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
            hooks.append(("after_return", task_id, status))

    def broken(**_: Any) -> None:
        raise RuntimeError("a broken receiver")

    def record(signal: str, **kwargs: Any) -> None:
        task, message = kwargs.get("task"), kwargs.get("message")
        signals.append((signal, task.name if task is not None else message.task if message is not None else None))

    for name in SIGNALS:
        getattr(app.signals, name).connect(broken)
        getattr(app.signals, name).connect(record)

    @app.task(name="hooks.ok", base=Audited)
    def ok(x: int, *, y: int) -> int:
        return x + y

    attempts: list[int] = []

    @app.task(name="hooks.flaky", base=Audited, autoretry_for=(OSError,), default_retry_delay=0.1)
    def flaky() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError("network blip")

    @app.task(name="hooks.bad", base=Audited)
    def bad() -> None:
        raise KeyError("missing")

    ok_id, flaky_id, bad_id = ok.delay(1, y=2).id, flaky.delay().id, bad.delay().id
    publish_raw(channel, "work", "[[], {}, {}]", headers=celery_headers("hooks.unknown", "u-1"))

    # When a burst worker drains the queue
    worker = run_worker(app, concurrency=1)
    app.close()

    # Then the base-class hooks ran for each outcome
    assert [h for h in hooks if h[1] == ok_id] == [("on_success", ok_id, 3, (1,), {"y": 2}),
                                                   ("after_return", ok_id, "SUCCESS")]  # fmt: skip
    assert [h for h in hooks if h[1] == flaky_id] == [("on_retry", flaky_id, "OSError"),
                                                      ("on_success", flaky_id, None, (), {}),
                                                      ("after_return", flaky_id, "SUCCESS")]  # fmt: skip
    assert [h for h in hooks if h[1] == bad_id] == [("on_failure", bad_id, "KeyError"),
                                                    ("after_return", bad_id, "FAILURE")]  # fmt: skip
    # And the signals fired at each step, the broken receiver notwithstanding
    assert [s for s, t in signals if t == "hooks.ok"] == ["task_received", "task_prerun", "task_success",
                                                          "task_postrun"]  # fmt: skip
    assert [s for s, t in signals if t == "hooks.flaky"] == ["task_received", "task_prerun", "task_retry",
                                                             "task_received", "task_prerun", "task_success",
                                                             "task_postrun"]  # fmt: skip
    assert [s for s, t in signals if t == "hooks.bad"] == ["task_received", "task_prerun", "task_failure",
                                                           "task_postrun"]  # fmt: skip
    assert [s for s, t in signals if t == "hooks.unknown"] == ["task_received", "task_rejected"]
    assert len([r for r in caplog.records if r.name == "amqptasks.signals" and r.exc_info]) == len(signals)
    # And the worker settled every message as usual
    assert worker.processed == 5
    assert sorted(p.headers["task"] for _, p, _ in get_all(channel, "work.dlq")) == ["hooks.bad", "hooks.unknown"]
    assert ready(channel, "work") == 0


def test_a_hook_that_raises_after_success_does_not_dead_letter_the_message(
    vhost: BrokerURL, channel: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a base class whose on_success raises, and a middleware whose after_success raises
    app = make_app(vhost)

    class Clumsy(Task[Any, Any]):
        def on_success(self, retval: Any, task_id: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
            raise ValueError("bug in on_success")

    class BrokenMetrics(Middleware):
        def after_success(self, delivery: Any, result: Any) -> None:
            raise ConnectionError("statsd down")

    @app.task(name="hooks.done", base=Clumsy)
    def done() -> str:
        return "ok"

    done.delay()

    # When a burst worker runs it
    run_worker(app, middleware=[BrokenMetrics()])
    app.close()

    # Then the task's success stands: acknowledged, not dead-lettered; both errors logged
    assert ready(channel, "work") == 0 and get_all(channel, "work.dlq") == []
    errors = [r.getMessage() for r in caplog.records if r.exc_info and r.name.startswith("amqptasks")]
    assert any("TaskHooks.after_success failed" in e for e in errors)
    assert any("BrokenMetrics.after_success failed" in e for e in errors)
