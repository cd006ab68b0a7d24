"""Retries inside workflows, with a real ``amqptasks worker`` process and only one queue (``work``, no ``default``).

A step that retries (``self.retry()``, ``autoretry_for``) is published again as a fresh message; that message
must still be the same step of the same workflow: its chain, its chord, its group id and index, its callbacks
and errbacks, its parent and root ids, its reply-to. One worker process serves the whole module.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from amqptasks import App, AsyncResult, chain, chord, group
from amqptasks.broker import BrokerURL, open_blocking
from amqptasks.errors import UnroutableStep
from amqptasks.result import GroupResult
from amqptasks.results.chord import ChordError
from tests.worker_helpers import Project, WorkerProcess, get_all, make_app, ready, wait_until

pytestmark = pytest.mark.broker

#: One queue, no routes, no ``default``: every task names its queue, and the chord bookkeeping must follow it.
YAML = """
delays: {enabled: true}
topology:
  provision: true
  exchanges: [{name: late, type: direct}]
  queues:
    - {name: work, dead_letter: auto, bindings: [{exchange: late, routing_key: late}]}
results: {backend: 'rpc://'}
"""

TASKS = """
import os
import time

from amqptasks import Task


@app.task(bind=True, queue="work")
def flaky(self, x, y):
    # Fails once (its first run), then succeeds: a retry of the same message.
    record(task="flaky", id=self.request.id, retries=self.request.retries, group=self.request.message.group)
    if self.request.retries == 0:
        self.retry(countdown=0.2)
    return x + y


@app.task(bind=True, queue="work", autoretry_for=(KeyError,), max_retries=2, default_retry_delay=0.1)
def always_fails(self, x):
    record(task="always_fails", id=self.request.id, retries=self.request.retries)
    raise KeyError(f"no {x}")


@app.task(bind=True, queue="work")
def stalls_once(self, x):
    # Its first delivery hangs (its worker is killed meanwhile); the redelivered copy returns.
    record(task="stalls_once", redelivered=self.request.redelivered, counted=self.request.headers.get(
        "x-amqptasks-redeliveries"))
    marker = os.path.join(os.path.dirname(__file__), "stalled")
    if not os.path.exists(marker):
        open(marker, "w").close()
        time.sleep(60)
    return x


@app.task(queue="work")
def gives_a_set():
    return {1, 2}  # cannot be encoded as the next step's argument


@app.task(queue="work")
def counted(x):
    record(task="counted", x=x)
    return x * 2


@app.task(exchange="late", routing_key="late")
def late_step(x):
    return x + 1


@app.task(exchange="late", routing_key="late")
def late_errback(request, exc, traceback):
    record(task="late_errback", failed=request["id"])
    return request["id"]


@app.task(queue="work")
def add(x, y):
    return x + y


@app.task(queue="work")
def tsum(values):
    return sum(values)


@app.task(queue="work")
def on_error(request, exc, traceback):
    record(task="on_error", failed=request["id"], retries=request["retries"], type=exc["type"])
    return request["id"]
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, module_vhost: BrokerURL) -> Project:
    return Project.create(Path(tmp_path_factory.mktemp("flows")), module_vhost, TASKS, YAML)


@pytest.fixture(scope="module")
def worker(project: Project) -> Iterator[WorkerProcess]:
    process = WorkerProcess(project, "-Q", "work", "-c", "8")
    try:
        process.wait_for_log("ready: consuming")
        yield process
    finally:
        process.kill()


@pytest.fixture(scope="module")
def app(project: Project, worker: WorkerProcess) -> Iterator[App]:
    publisher = project.app()
    try:
        yield publisher
    finally:
        publisher.close()


@pytest.fixture(scope="module")
def t(app: App) -> dict[str, Any]:
    """The publisher's tasks: the same declarations as the worker's (so the same queues), never run here."""
    namespace: dict[str, Any] = {"__name__": "tasks", "app": app, "record": None}
    exec(TASKS, namespace)
    return namespace


def flaky_runs(project: Project, task_id: str) -> list[int]:
    return [r["retries"] for r in project.records() if r["task"] == "flaky" and r["id"] == task_id]


def test_a_chain_goes_on_after_a_step_that_retried(app: App, t: dict[str, Any], project: Project) -> None:
    # Given a chain whose first step fails once through self.retry(countdown=0.2)
    result = chain(t["flaky"].s(1, 1), t["add"].s(10)).delay()
    # Then the next step still runs, with the retried step's result
    assert result.get(timeout=15) == 12
    assert isinstance(result.parent, AsyncResult)
    assert flaky_runs(project, result.parent.id) == [0, 1]


def test_a_chord_of_members_that_retried_calls_back_with_every_result(
    app: App, t: dict[str, Any], project: Project
) -> None:
    # Given a chord of 5 members that each fail once, and only the 'work' queue (no 'default')
    members = [t["flaky"].s(i, i) for i in range(5)]
    result = chord(members, t["tsum"].s()).delay()
    # Then the callback gets every member's result
    assert result.get(timeout=15) == sum(i * 2 for i in range(5))
    assert isinstance(result.parent, GroupResult)
    for index, member in enumerate(result.parent.results):
        assert flaky_runs(project, member.id) == [0, 1], index
        # and each retried member kept its group membership
        assert {r["group"] for r in project.records() if r.get("id") == member.id} == {result.parent.id}


def test_a_group_of_members_that_retried_returns_every_result_in_order(app: App, t: dict[str, Any]) -> None:
    result = group(t["flaky"].s(i, 1) for i in range(4)).delay()
    assert result.get(timeout=15) == [1, 2, 3, 4]


def test_a_chord_inside_a_chain_goes_on_after_retried_steps(app: App, t: dict[str, Any]) -> None:
    # Given a chain: a retrying step, then a chord of retrying members, then a retrying step after the callback
    members = group(t["flaky"].s(i) for i in range(3))
    workflow = chain(t["flaky"].s(1, 1), members, t["tsum"].s(), t["flaky"].s(1000))
    # Then every step runs once it succeeded: (2+0) + (2+1) + (2+2) = 9, then 9 + 1000
    assert workflow.delay().get(timeout=20) == 1009


def test_chains_inside_a_chord_and_a_group_go_on_after_a_retried_step(app: App, t: dict[str, Any]) -> None:
    # Given chord and group members that are chains whose first step fails once
    members = [chain(t["flaky"].s(i, i), t["add"].s(100)) for i in range(3)]
    # Then each member chain completes and the chord's callback gets every chain's last result, in order
    assert chord(members, t["tsum"].s()).delay().get(timeout=20) == (0 + 2 + 4) + 300
    assert group(chain(t["flaky"].s(i, 1), t["add"].s(10)) for i in range(3)).delay().get(timeout=20) == [11, 12, 13]


def test_a_chord_of_chains_inside_a_chain_goes_on_after_retried_steps(app: App, t: dict[str, Any]) -> None:
    # Given a chain: a retrying step, a chord whose members are chains with retrying steps, then its callback
    members = group(chain(t["add"].s(1), t["flaky"].s(10)), chain(t["flaky"].s(2), t["add"].s(100)))
    workflow = chain(t["flaky"].s(1, 1), members, t["tsum"].s())
    # Then: 2, then members (2+1)+10 = 13 and (2+2)+100 = 104, then their sum
    assert workflow.delay().get(timeout=30) == 117


def test_a_chord_whose_member_will_never_run_fails_at_once(app: App, t: dict[str, Any]) -> None:
    # Given a chord with a member that has expired before any worker gets it
    gone = t["flaky"].s(2, 2).set(expires=datetime.now(UTC) - timedelta(seconds=1))
    result = chord([t["flaky"].s(1, 1), gone], t["tsum"].s()).delay()
    # Then its callback fails within seconds, naming the member, instead of the unlock polling until the queue expires
    with pytest.raises(ChordError, match="expired"):
        result.get(timeout=15)


def test_errbacks_fire_once_after_the_last_retry(app: App, t: dict[str, Any], project: Project) -> None:
    # Given a task retried twice by autoretry_for, with an errback
    errback = t["on_error"].s().set(task_id=f"eb-{uuid.uuid4().hex[:8]}")
    failing = t["always_fails"].apply_async((7,), link_error=errback)
    # Then its errback runs exactly once, after the third (last) run
    assert AsyncResult(str(errback.options["task_id"]), app=app, backend=app.result_backend).get(timeout=15) == (
        failing.id
    )
    runs = [r["retries"] for r in project.records() if r["task"] == "always_fails" and r["id"] == failing.id]
    assert runs == [0, 1, 2]
    errbacks = [r for r in project.records() if r["task"] == "on_error" and r["failed"] == failing.id]
    assert errbacks == [{"task": "on_error", "failed": failing.id, "retries": 2, "type": "builtins.KeyError",
                         "at": errbacks[0]["at"]}]  # fmt: skip


def test_a_step_whose_next_step_cannot_be_published_runs_again_until_it_can(
    app: App, t: dict[str, Any], project: Project, worker: WorkerProcess, module_vhost: BrokerURL
) -> None:
    # Given the exchange of a chain's second step deleted after the publisher provisioned the topology
    app.provision()
    connection = open_blocking(module_vhost, connection_name="flows test")
    try:
        channel = connection.channel()
        channel.exchange_delete("late")
        # When the chain is published: its first step runs, but its next step cannot be published
        result = chain(t["counted"].s(21), t["late_step"].s()).delay()
        worker.wait_for_log("what its workflow needs next was not published", timeout=15)
        # Then once the exchange is back, the first step runs again and the chain completes
        app.provision()  # what 'amqptasks topology apply' does: the exchange and its binding are back
    finally:
        connection.close()
    assert result.get(timeout=30) == 43
    runs = [r for r in project.records() if r["task"] == "counted" and r["x"] == 21]
    assert len(runs) >= 2


def test_an_errback_that_cannot_be_published_is_sent_once_it_can(
    app: App, t: dict[str, Any], project: Project, worker: WorkerProcess, module_vhost: BrokerURL
) -> None:
    # Given a task that fails for good, whose errback's exchange is deleted
    app.provision()
    errback = t["late_errback"].s().set(task_id=f"eb-{uuid.uuid4().hex[:8]}")
    connection = open_blocking(module_vhost, connection_name="flows test")
    try:
        channel = connection.channel()
        channel.exchange_delete("late")
        before = worker.output.count("what its workflow needs next was not published")
        failing = t["always_fails"].apply_async((8,), link_error=errback)
        # When the errback cannot be published, the failed task is not dead-lettered: it comes back
        worker.wait_for_log("what its workflow needs next was not published", timeout=15, count=before + 1)
        app.provision()  # what 'amqptasks topology apply' does: the exchange and its binding are back
    finally:
        connection.close()
    # Then once the exchange is back, the errback runs, exactly once
    assert AsyncResult(str(errback.options["task_id"]), app=app).get(timeout=30) == failing.id
    assert [r["failed"] for r in project.records() if r["task"] == "late_errback"] == [failing.id]


def test_a_step_whose_result_the_next_step_cannot_take_is_dead_lettered_not_repeated(
    app: App, t: dict[str, Any], worker: WorkerProcess, module_vhost: BrokerURL
) -> None:
    # Given a chain whose first step returns what the next step's message cannot encode (a set)
    first = chain(t["gives_a_set"].s(), t["add"].s(1)).delay().parent
    assert isinstance(first, AsyncResult)
    # Then running it again could not help: its message is dead-lettered (kept for a replay), with the reason logged
    worker.wait_for_log(f"tasks.gives_a_set[{first.id}]: what its workflow needs next cannot be published")
    connection = open_blocking(module_vhost, connection_name="flows test")
    try:
        channel = connection.channel()
        wait_until(lambda: any(p.correlation_id == first.id for _, p, _ in get_all(channel, "work.dlq")),
                   timeout=15, what="the message in work.dlq")  # fmt: skip
    finally:
        connection.close()
    assert worker.output.count(f"tasks.gives_a_set[{first.id}]: what its workflow needs next") == 1


def test_a_chain_step_redelivered_after_its_worker_died_goes_on_to_the_next_step(
    tmp_path: Path, vhost: BrokerURL
) -> None:
    # Given a chain whose first step hangs in a worker that is then killed (SIGKILL)
    project = Project.create(tmp_path, vhost, TASKS, YAML)
    with project.app() as app:
        namespace: dict[str, Any] = {"__name__": "tasks", "app": app, "record": None}
        exec(TASKS, namespace)
        doomed = WorkerProcess(project, "-Q", "work", "--processes", "1")
        try:
            doomed.wait_for_log("ready: consuming")
            result = chain(namespace["stalls_once"].s(5), namespace["add"].s(10)).delay()
            wait_until(lambda: len(project.records()) == 1, timeout=15, what="the first step to start")
        finally:
            doomed.kill()
        # When another worker gets the redelivered message (counted, and sent again as a fresh copy)
        rescuer = WorkerProcess(project, "-Q", "work", "--processes", "1")
        try:
            # Then the chain goes on from that copy: its next step runs with its result
            assert result.get(timeout=20) == 15
        finally:
            rescuer.kill()
    runs = [(r["redelivered"], r["counted"]) for r in project.records()]
    assert runs == [(False, None), (False, 1)]  # the counted copy is a fresh message carrying the count


def test_a_workflow_with_a_step_that_cannot_be_routed_publishes_nothing(vhost: BrokerURL, channel: Any) -> None:
    # Given the one-queue topology, and workflows with one step routed where nothing is declared
    app = make_app(vhost, YAML)
    t: dict[str, Any] = {"__name__": "tasks", "app": app, "record": None}
    exec(TASKS, t)
    lost = t["add"].s(10).set(queue="default")
    cases = [
        (chain(t["flaky"].s(1, 1), lost), "step 2 tasks.add.s(10)", "queue 'default' is not declared"),
        (group(t["add"].s(1, 1), t["add"].s(2, 2).set(exchange="nowhere")), "member 2 tasks.add.s(2, 2)",
         "exchange 'nowhere' is not declared"),
        (chord([t["add"].s(1, 1)], lost), "callback tasks.add.s(10)", "queue 'default'"),
        (chain(t["add"].s(1, 1), group(t["add"].s(1), t["add"].s(2).set(link_error=lost))),
         "step 2, member 2, link_error tasks.add.s(10)", "queue 'default'"),
        (chain(t["add"].s(1, 1), t["add"].s(1).set(routing_key="other", exchange="late")),
         "step 2 tasks.add.s(1)", "no binding of direct exchange 'late' takes routing key 'other'"),
    ]  # fmt: skip
    for workflow, step, reason in cases:
        # When it is published
        with pytest.raises(UnroutableStep) as refused:
            workflow.delay()
        # Then the error names the workflow and the step, and says why
        assert refused.value.workflow == repr(workflow) and refused.value.step == step
        assert reason in str(refused.value) and str(refused.value).startswith(repr(workflow))
    # And nothing of any of them was published
    assert ready(channel, "work") == 0
    app.close()
