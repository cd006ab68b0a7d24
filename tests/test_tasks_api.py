"""The task API without a broker: declaration, in-process calls, argument checks, options precedence."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from amqptasks import App
from amqptasks.tasks.task import Task

NOWHERE = "amqp://guest:guest@127.0.0.1:1/%2F"  # nothing listens: any attempt to publish would fail


def app_from(tmp_path: Path, yaml_text: str = "{}") -> App:
    path = tmp_path / "app.yaml"
    path.write_text(textwrap.dedent(yaml_text))
    return App.from_config(path, broker_url=NOWHERE)


def test_task_name_defaults_to_module_and_function(tmp_path: Path) -> None:
    app = app_from(tmp_path)

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    assert add.name == f"{__name__}.test_task_name_defaults_to_module_and_function.<locals>.add"
    assert app.tasks[add.name] is add


def test_calling_a_task_runs_it_in_process(tmp_path: Path) -> None:
    app = app_from(tmp_path)

    @app.task(name="math.add")
    def add(x: int, y: int) -> int:
        return x + y

    assert add(2, 3) == 5


def test_bound_task_receives_itself(tmp_path: Path) -> None:
    app = app_from(tmp_path)

    @app.task(bind=True, name="who")
    def who(self: Task[Any, Any], greeting: str) -> str:
        return f"{greeting} from {self.name}"

    assert who("hi") == "hi from who"


def test_unknown_decorator_option_fails_at_declaration_with_a_hint(tmp_path: Path) -> None:
    app = app_from(tmp_path)
    with pytest.raises(TypeError, match=r"unknown task option 'max_retires' \(did you mean 'max_retries'\?\)"):

        @app.task(max_retires=3)
        def f() -> None: ...


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"rate_limit": "ten per second"}, "must look like '10/s'"),
        ({"time_limit": -1}, "time_limit must be a positive number"),
        ({"autoretry_for": (ValueError, "KeyError")}, "autoretry_for must be a tuple of exception classes"),
        ({"base": dict}, "base must be a subclass"),
    ],
)
def test_malformed_decorator_options_fail_at_declaration(tmp_path: Path, options: dict[str, Any], message: str) -> None:
    app = app_from(tmp_path)
    with pytest.raises((TypeError, ValueError), match=message):
        app.task(**options)(lambda: None)


def test_wrong_arguments_raise_type_error_before_anything_is_sent(tmp_path: Path) -> None:
    app = app_from(tmp_path)

    @app.task(name="math.add")
    def add(x: int, y: int) -> int:
        return x + y

    # The broker URL points nowhere: reaching the publisher would raise a ConnectionError instead.
    with pytest.raises(TypeError, match=r"math.add\(\): missing a required argument: 'y'"):
        add.delay(1)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected keyword argument 'z'"):
        add.apply_async((1, 2), {"z": 3})


def test_registering_the_same_name_twice_is_an_error(tmp_path: Path) -> None:
    app = app_from(tmp_path)
    app.task(name="dup")(lambda: 1)
    with pytest.raises(ValueError, match="already registered"):
        app.task(name="dup")(lambda: 2)


def test_yaml_task_settings_override_the_decorator_exact_name_over_glob(tmp_path: Path) -> None:
    app = app_from(
        tmp_path,
        """
        tasks:
          "billing.*": {max_retries: 7, rate_limit: 10/s, priority: 3}
          billing.charge: {max_retries: 1}
        """,
    )

    @app.task(name="billing.charge", max_retries=5, time_limit=30)
    def charge() -> None: ...

    @app.task(name="billing.refund", max_retries=5)
    def refund() -> None: ...

    assert (charge.options.max_retries, charge.options.rate_limit, charge.options.time_limit) == (1, "10/s", 30)
    assert (refund.options.max_retries, refund.options.priority) == (7, 3)
    assert app.task_options("billing.unknown").max_retries == 7  # send_task by name gets them too


def test_yaml_task_settings_reject_unknown_options_with_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "app.yaml"
    path.write_text('tasks:\n  "billing.*": {max_retires: 3}\n')
    from amqptasks.config import check_file

    _, diags = check_file(path)
    [error] = diags.errors
    assert "unknown key 'max_retires' (did you mean 'max_retries'?)" in str(error)
    assert str(error).startswith(f"{path}:2:17: tasks 'billing.*': ")
