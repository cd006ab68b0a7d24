"""rpc:// as callers use it, against a real ``amqptasks worker`` subprocess: many threads of one process sharing the
reply connection, ``ready()`` polled instead of ``get()``, and a caller idle for longer than its heartbeat.

The caller reads its replies in the waiting thread (broker/rabbitmq/replies.py); these tests count what every
caller got back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from amqptasks import App
from amqptasks.broker import BrokerURL
from amqptasks.errors import PublishConnectionError, PublishError
from tests.worker_helpers import YAML, Project, worker_process

pytestmark = pytest.mark.broker

TASKS = """
@app.task(name="calc.add")
def add(x, y):
    return x + y
"""

THREADS, CALLS = 8, 40


def project(tmp_path: Path, vhost: BrokerURL, extra_yaml: str = "") -> Project:
    return Project.create(tmp_path, vhost, TASKS, YAML + "results: {backend: 'rpc://'}\n" + extra_yaml)


@pytest.fixture
def caller(tmp_path: Path, vhost: BrokerURL) -> Iterator[App]:
    proj = project(tmp_path, vhost)
    with worker_process(proj, "-Q", "work"):
        app = proj.app()
        try:
            yield app
        finally:
            app.close()


def test_threads_sharing_one_app_each_get_their_own_results(caller: App) -> None:
    # Given a worker, and one app whose results come back by rpc:// to this process
    outcomes: dict[tuple[int, int], object] = {}
    errors: list[BaseException] = []

    def calls(thread: int) -> None:
        try:
            for i in range(CALLS):
                outcomes[(thread, i)] = caller.send_task("calc.add", (thread * 1000, i)).get(timeout=15)
        except BaseException as exc:
            errors.append(exc)

    # When 8 threads each publish 40 tasks and wait for each result in turn
    threads = [threading.Thread(target=calls, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)

    # Then every call got its own result: none missing, none crossed over to another thread's call
    assert errors == []
    assert len(outcomes) == THREADS * CALLS
    wrong = {key: value for key, value in outcomes.items() if value != key[0] * 1000 + key[1]}
    assert wrong == {}


def test_a_thread_polling_ready_sees_its_result_while_another_waits_in_get(caller: App) -> None:
    # Given one thread waiting in get() on a task of its own (it reads the reply connection meanwhile)
    waiting = caller.send_task("calc.add", (1, 1))
    got: list[object] = []
    getter = threading.Thread(target=lambda: got.append(waiting.get(timeout=15)))
    getter.start()
    # When another thread publishes a task and polls ready() instead of calling get()
    polled = caller.send_task("calc.add", (2, 2))
    deadline = time.monotonic() + 15
    while not polled.ready():
        assert time.monotonic() < deadline, "ready() never turned True"
        time.sleep(0.005)
    getter.join(15)
    # Then both see their result
    assert (polled.result, got) == (4, [2])


def test_ready_alone_sees_the_result_with_no_get_anywhere(caller: App) -> None:
    # Given a task published with no thread waiting in get()
    result = caller.send_task("calc.add", (20, 22))
    # When the caller only polls ready()
    deadline = time.monotonic() + 15
    while not result.ready():
        assert time.monotonic() < deadline, "ready() never turned True"
        time.sleep(0.005)
    # Then the result arrived
    assert (result.state, result.result) == ("SUCCESS", 42)


def test_an_idle_caller_keeps_its_reply_connection_past_its_heartbeat(
    tmp_path: Path, vhost: BrokerURL, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a caller whose YAML asks for a 1 s heartbeat (the broker drops a connection silent for 2 of them)
    proj = project(tmp_path, vhost, "broker: {heartbeat: 1}\n")
    with worker_process(proj, "-Q", "work"):
        app = proj.app()
        try:
            assert app.send_task("calc.add", (1, 2)).get(timeout=15) == 3
            # When it publishes nothing and waits for nothing for 3.5 heartbeats (the idle time under test)
            with caplog.at_level(logging.WARNING, logger="amqptasks.results"):
                time.sleep(3.5)
                later = app.send_task("calc.add", (3, 4)).get(timeout=15)
        finally:
            app.close()
    # Then its reply connection was kept alive meanwhile: no "connection lost", and the next round trip works
    assert later == 7
    assert [r.getMessage() for r in caplog.records if "connection lost" in r.getMessage()] == []


def test_a_task_sent_to_a_missing_exchange_says_so_and_the_next_round_trip_works(caller: App) -> None:
    # Given a caller whose results come back by rpc://
    # When it publishes a task to an exchange that does not exist
    with pytest.raises(PublishError) as raised:
        caller.send_task("calc.add", (1, 2), exchange="nowhere", routing_key="x")
    # Then it is told which exchange and what to do, not that its connection was lost
    assert "404" in str(raised.value) and "'nowhere'" in str(raised.value) and "declare it first" in str(raised.value)
    assert not isinstance(raised.value, PublishConnectionError)
    # And its next task still gets its result (the reply channel the broker closed was replaced)
    assert caller.send_task("calc.add", (2, 3)).get(timeout=15) == 5
