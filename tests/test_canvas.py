"""Workflows on a real broker with rpc:// results (and redis:// for a chord): link/link_error, chain, group, chord
(RabbitMQ only), groups and chords in chains, map."""

from __future__ import annotations

from typing import Any

import pika.exceptions
import pytest

from amqptasks import App, AsyncResult
from amqptasks.broker import BrokerURL
from amqptasks.canvas import chain, chord, chunks, group, xmap, xstarmap
from amqptasks.result import GroupResult
from amqptasks.results.chord import ChordError
from tests.test_results import RPC_YAML, redis_yaml, worker_running
from tests.worker_helpers import make_app

pytestmark = pytest.mark.broker


def define(app: App) -> dict[str, Any]:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def mul(x: int, y: int) -> int:
        return x * y

    @app.task
    def tsum(values: list[int]) -> int:
        return sum(values)

    @app.task
    def fail(x: int) -> None:
        raise ValueError(f"no {x}")

    @app.task
    def on_error(request: dict[str, Any], exc: dict[str, Any], traceback: str) -> list[Any]:
        return [request["id"], request["args"], exc["type"], exc["message"], "ValueError" in traceback]

    @app.task
    def on_error_old_style(task_id: str) -> str:
        return f"failed: {task_id}"

    return {f.name.rsplit(".", 1)[-1]: f for f in (add, mul, tsum, fail, on_error, on_error_old_style)}


@pytest.fixture
def app(vhost: BrokerURL) -> App:
    return make_app(vhost, RPC_YAML)


def awaited(app: App, task_id: str) -> AsyncResult:
    return AsyncResult(task_id, app=app, backend=app.result_backend)


def test_link_and_link_error_run_after_the_task(app: App) -> None:
    t = define(app)
    with worker_running(app):
        # Given callbacks whose results the test can wait for (their ids are chosen up front)
        first = t["add"].apply_async((2, 2), link=t["mul"].s(10).set(task_id="cb-1"))
        failing = t["fail"].apply_async((7,), link_error=[t["on_error"].s().set(task_id="eb-1"),
                                                          t["on_error_old_style"].s().set(task_id="eb-2")])  # fmt: skip
        immutable = t["add"].apply_async((1, 1), link=t["add"].si(5, 5).set(task_id="cb-2"))
        # Then the callback got the result first, errbacks got Celery 5's (request, exc, traceback) or the id
        assert first.get(timeout=5) == 4 and awaited(app, "cb-1").get(timeout=5) == 40
        assert awaited(app, "eb-1").get(timeout=5) == [failing.id, [7], "builtins.ValueError", "no 7", True]
        assert awaited(app, "eb-2").get(timeout=5) == f"failed: {failing.id}"
        assert immutable.get(timeout=5) == 2 and awaited(app, "cb-2").get(timeout=5) == 10


def test_a_chain_passes_each_result_on_and_links_parents(app: App) -> None:
    t = define(app)
    with worker_running(app):
        result = (t["add"].s(2, 2) | t["add"].s(4) | t["mul"].s(10)).delay()
        assert result.get(timeout=10) == 80
        assert isinstance(result.parent, AsyncResult) and result.parent.get(timeout=1) == 8
        assert isinstance(result.parent.parent, AsyncResult) and result.parent.parent.get(timeout=1) == 4
        assert chain(t["add"].s(1), t["mul"].si(3, 3)).delay(1).get(timeout=10) == 9
        with pytest.raises(ValueError, match="no 3"):
            (t["add"].s(1, 2) | t["fail"].s()).delay().get(timeout=10)


def test_a_group_returns_results_in_order(app: App) -> None:
    t = define(app)
    with worker_running(app):
        result = group(t["add"].s(i, i) for i in range(20)).delay()
        assert result.get(timeout=10) == [i * 2 for i in range(20)]
        assert result.ready() and result.successful() and result.completed_count() == 20


def test_a_chord_of_100_runs_its_callback_once_with_every_result(app: App, channel: Any) -> None:
    t = define(app)
    with worker_running(app, concurrency=16):
        result = chord([t["add"].s(i, i) for i in range(100)], t["tsum"].s()).delay()
        assert result.get(timeout=60) == 9900
        # group | callback is a chord too; a failing member fails the callback
        assert (group(t["add"].s(i, 1) for i in range(3)) | t["tsum"].s()).delay().get(timeout=30) == 6
        with pytest.raises(ChordError, match="no 2"):
            chord([t["add"].s(1, 1), t["fail"].s(2)], t["tsum"].s()).delay().get(timeout=30)
    # Then the chord's result queue is gone
    assert isinstance(result.parent, GroupResult) and len(result.parent) == 100
    with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="NOT_FOUND"):
        channel.queue_declare(f"amqptasks.chord.{result.parent.id}", passive=True)


def test_a_chord_with_redis_results_runs_its_callback_with_every_result(vhost: BrokerURL, redis_url: str) -> None:
    # Given an app whose results are kept in Redis (the chord itself still meets in a RabbitMQ queue)
    app = make_app(vhost, redis_yaml(redis_url))
    t = define(app)
    with worker_running(app, concurrency=8):
        # When a chord is published and its callback waited for
        result = chord([t["add"].s(i, i) for i in range(10)], t["tsum"].s()).delay()
        # Then it gets the sum of every member's result, and the members' results are in Redis too
        assert result.get(timeout=30) == 90
        assert isinstance(result.parent, GroupResult) and result.parent.get(timeout=5) == [i * 2 for i in range(10)]
        with pytest.raises(ChordError, match="no 2"):
            chord([t["add"].s(1, 1), t["fail"].s(2)], t["tsum"].s()).delay().get(timeout=30)
        # And a chain whose first step ignores its result still gives the later steps' results
        quiet = chain(t["add"].s(1, 2).set(ignore_result=True), t["mul"].s(10)).delay()
        assert quiet.get(timeout=10) == 30


def test_map_starmap_and_chunks(app: App) -> None:
    t = define(app)
    with worker_running(app):
        assert xmap(t["tsum"].s(), [[1, 2], [3]]).delay().get(timeout=10) == [3, 3]
        assert xstarmap(t["add"].s(), [(1, 2), (3, 4)]).delay().get(timeout=10) == [3, 7]
        assert chunks(t["add"].s(), [(i, i) for i in range(10)], 4).delay().get(timeout=10) == [
            [0, 2, 4, 6], [8, 10, 12, 14], [16, 18]]  # fmt: skip


def test_a_group_in_a_chain_gets_the_previous_result_and_a_task_after_it_makes_a_chord(app: App) -> None:
    t = define(app)
    add, tsum, mul = t["add"], t["tsum"], t["mul"]
    with worker_running(app, concurrency=4):
        # When a chain ends with a group, each member gets the previous result first: add(2, 1), add(2, 2)
        fan_out = (add.s(1, 1) | group(add.s(1), add.s(2))).delay()
        # and a group followed by a task is a chord, here in the middle of a chain
        fan_in = chain(add.s(1, 1), group(add.s(1), add.s(2)), tsum.s(), mul.s(10)).delay()
        # also when the chain starts with the group, or with an explicit chord
        first = chain(group(add.s(1, 1), add.s(2, 2)), tsum.s(), mul.s(2)).delay()
        explicit = (add.s(2, 3) | chord([add.s(i) for i in range(3)], tsum.s())).delay()
        # Then
        assert isinstance(fan_out, GroupResult) and fan_out.get(timeout=20) == [3, 4]
        assert fan_in.get(timeout=20) == 70
        assert first.get(timeout=20) == 12
        assert explicit.get(timeout=20) == 18  # 5 + 0, 5 + 1, 5 + 2
    # The results link back through the chord: mul <- tsum <- the group <- add
    assert isinstance(fan_in, AsyncResult) and isinstance(fan_in.parent, AsyncResult)
    assert fan_in.parent.get(timeout=1) == 7
    members = fan_in.parent.parent
    assert isinstance(members, GroupResult) and members.get(timeout=1) == [3, 4]
    assert isinstance(members.parent, AsyncResult) and members.parent.get(timeout=1) == 2
    assert isinstance(fan_out.parent, AsyncResult) and fan_out.parent.get(timeout=1) == 2


def test_what_cannot_be_composed_says_so(app: App) -> None:
    t = define(app)
    with pytest.raises(TypeError, match="a group in a chain must be the last step or be followed by a task"):
        _ = t["add"].s(1, 1) | group(t["add"].s(1), t["add"].s(2)) | group(t["add"].s(1))
    with pytest.raises(TypeError, match="has no callback"):
        chain(t["add"].s(1, 1), chord([t["add"].s(1)]))
    assert isinstance(group(t["add"].s(1, 1)) | t["tsum"].s(), chord)
    assert repr(t["add"].s(1) | t["mul"].s(2)).count("|") == 1
    app.close()
