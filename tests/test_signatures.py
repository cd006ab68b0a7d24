"""Signatures: partial calls as JSON-serializable data, Celery-shaped (pure)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from amqptasks import App
from amqptasks.canvas import chord, from_dict
from amqptasks.tasks.signature import Signature


def make_app() -> tuple[App, object]:
    app = App(broker_url="amqp://guest:guest@127.0.0.1:1/%2F")

    @app.task(name="math.sub")
    def sub(x: int, y: int) -> int:
        return x - y

    return app, sub


def test_signature_is_celery_shaped_json_and_rebuilds() -> None:
    app, sub = make_app()
    sig = sub.s(2).set(countdown=1)  # type: ignore[attr-defined]
    data = json.loads(json.dumps(sig))
    assert data == {
        "task": "math.sub",
        "args": [2],
        "kwargs": {},
        "options": {"countdown": 1},
        "subtask_type": None,
        "immutable": False,
        "chord_size": None,
    }
    assert Signature.from_dict(data, app) == sig


def test_partial_arguments_go_before_the_stored_ones() -> None:
    _, sub = make_app()
    assert sub.s(2)(10) == 8  # type: ignore[attr-defined]  # sub(10, 2)


def test_immutable_signature_ignores_partial_arguments() -> None:
    _, sub = make_app()
    assert sub.si(5, 1)(100) == 4  # type: ignore[attr-defined]


def test_clone_merges_options_without_touching_the_original() -> None:
    _, sub = make_app()
    original = sub.s(1)  # type: ignore[attr-defined]
    clone = original.clone((9,), priority=3)
    assert clone.args == (9, 1) and clone.options == {"priority": 3}
    assert original.args == (1,) and original.options == {}


def test_delay_type_checks_against_the_function_signature(tmp_path: Path) -> None:
    from mypy import api

    snippet = tmp_path / "typed.py"
    snippet.write_text(
        "from amqptasks import App\n"
        "app = App()\n"
        "@app.task\n"
        "def add(x: int, y: int) -> int:\n"
        "    return x + y\n"
        "add.delay(1, 2)\n"
        'add.delay("one", 2)\n'
        "add(1, 2) + 1\n"
    )
    out, _, status = api.run([str(snippet), "--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache")])
    ours = [line for line in out.splitlines() if line.startswith(str(snippet))]
    assert status == 1, out
    assert ours == [
        f'{snippet}:7: error: Argument 1 to "delay" of "Task" has incompatible type "str"; expected "int"  [arg-type]'
    ], out


def test_a_chord_whose_header_is_not_a_group_is_refused_not_read_as_an_empty_group() -> None:
    header = {"task": "m.add", "args": [1, 2], "kwargs": {}, "options": {}, "subtask_type": None}
    body = {"task": "m.total", "args": [], "kwargs": {}, "options": {}}
    with pytest.raises(TypeError, match="a chord's header must be a group"):
        from_dict({"subtask_type": "chord", "kwargs": {"header": header, "body": body}})
    ok = from_dict({"subtask_type": "chord", "kwargs": {"header": {"subtask_type": "group"}, "body": body}})
    assert isinstance(ok, chord) and len(ok.header) == 0
