"""Celery interop with real processes on both sides, both directions, on the real broker (and Redis).

Per module, once: a Celery worker with the rpc:// backend (queue ``interop``, prefork so that time limits apply)
and one with redis:// (``interop_redis``); our ``amqptasks worker`` with rpc:// (``ours``) and one with redis://
(``ours_redis``). Clients are in this process: a real Celery app and our App, each with either backend.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import celery
import celery.exceptions
import kombu.message
import pytest
import redis

from amqptasks import App
from amqptasks.broker import BrokerURL, ManagementClient
from amqptasks.errors import TaskExpired, TaskRevoked, TimeLimitExceeded
from amqptasks.results.exceptions import TaskError
from amqptasks.tasks.signature import Signature
from tests import celery_interop_app
from tests.celery_interop_app import QUEUE
from tests.celery_peers import celery_worker, module_vhost, our_project, our_worker
from tests.worker_helpers import Project, WorkerProcess

pytestmark = pytest.mark.broker

GET_TIMEOUT = 20.0


@pytest.fixture(scope="module")
def peers_vhost(broker: BrokerURL, mgmt: ManagementClient) -> Iterator[BrokerURL]:
    with module_vhost(broker, mgmt) as vhost:
        yield vhost


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("interop")


@pytest.fixture(scope="module")
def rpc_project(workdir: Path, peers_vhost: BrokerURL) -> Project:
    return our_project(workdir / "ours-rpc", peers_vhost, "rpc://")


@pytest.fixture(scope="module")
def redis_project(workdir: Path, peers_vhost: BrokerURL, redis_url: str) -> Project:
    return our_project(workdir / "ours-redis", peers_vhost, redis_url)


@pytest.fixture(scope="module")
def our_rpc_worker(rpc_project: Project) -> Iterator[WorkerProcess]:
    with our_worker(rpc_project, "-Q", "ours", "-n", "ours-rpc@interop") as worker:
        yield worker


@pytest.fixture(scope="module")
def our_redis_worker(redis_project: Project) -> Iterator[WorkerProcess]:
    with our_worker(redis_project, "-Q", "ours_redis", "-n", "ours-redis@interop") as worker:
        yield worker


@pytest.fixture(scope="module")
def celery_rpc_worker(workdir: Path, peers_vhost: BrokerURL) -> Iterator[Any]:
    # prefork: Celery enforces time limits only in its prefork pool.
    with celery_worker(workdir / "celery-rpc", peers_vhost, [QUEUE], hostname="celery-rpc@interop",
                       backend="rpc://", pool="prefork") as worker:  # fmt: skip
        yield worker


@pytest.fixture(scope="module")
def celery_redis_worker(workdir: Path, peers_vhost: BrokerURL, redis_url: str) -> Iterator[Any]:
    with celery_worker(workdir / "celery-redis", peers_vhost, ["interop_redis"], hostname="celery-redis@interop",
                       backend=redis_url) as worker:  # fmt: skip
        yield worker


@pytest.fixture(scope="module")
def ours_rpc(rpc_project: Project, our_rpc_worker: WorkerProcess) -> Iterator[App]:
    """Our client, rpc:// (the worker is up, so the queues exist)."""
    app = rpc_project.app()
    yield app
    app.close()


@pytest.fixture(scope="module")
def ours_redis(redis_project: Project, our_redis_worker: WorkerProcess) -> Iterator[App]:
    app = redis_project.app()
    yield app
    app.close()


@pytest.fixture(scope="module")
def celery_rpc(peers_vhost: BrokerURL) -> Iterator[celery.Celery]:
    """A Celery client, rpc://."""
    client = celery_interop_app.make_app(peers_vhost.to_url(), "rpc://", name="interop-client-rpc")
    yield client
    client.close()


@pytest.fixture(scope="module")
def celery_redis(peers_vhost: BrokerURL, redis_url: str) -> Iterator[celery.Celery]:
    client = celery_interop_app.make_app(peers_vhost.to_url(), redis_url, name="interop-client-redis")
    yield client
    client.close()


# --- time limits ----------------------------------------------------------------------------------------------


def test_our_time_limits_travel_in_celerys_order_and_a_celery_worker_reads_them(
    ours_rpc: App, celery_rpc_worker: Any
) -> None:
    sent = sig(ours_rpc, "interop.record", (), QUEUE).apply_async((1, 2), soft_time_limit=5, time_limit=10)

    run = celery_rpc_worker.ran({sent.id})[sent.id]

    assert run["timelimit"] == [10, 5]  # Celery's request.timelimit: [time_limit, soft_time_limit]
    assert sent.get(timeout=GET_TIMEOUT) == f"recorded {sent.id}"


def test_a_celery_clients_time_limit_stops_the_task_on_our_worker_at_about_one_second(
    celery_rpc: celery.Celery, our_rpc_worker: WorkerProcess
) -> None:
    started = time.monotonic()
    result = celery_rpc.send_task("interop.sleep", (5,), queue="ours", time_limit=1)

    with pytest.raises(celery.exceptions.TimeLimitExceeded):
        result.get(timeout=GET_TIMEOUT)

    assert time.monotonic() - started < 3.5  # 1 s, plus the trip; the task would sleep 5 s
    assert result.state == "FAILURE"


def test_a_celery_clients_soft_time_limit_is_raised_inside_the_task_on_our_worker(
    celery_rpc: celery.Celery, our_rpc_worker: WorkerProcess
) -> None:
    result = celery_rpc.send_task("interop.soft", (5,), queue="ours", soft_time_limit=0.5, time_limit=10)

    assert result.get(timeout=GET_TIMEOUT) == "soft limit reached"


def test_our_time_limit_stops_the_task_on_a_celery_worker(ours_rpc: App, celery_rpc_worker: Any) -> None:
    started = time.monotonic()
    result = ours_rpc.send_task("interop.sleep", (5,), queue=QUEUE, time_limit=1)

    with pytest.raises(TimeLimitExceeded):
        result.get(timeout=GET_TIMEOUT)
    assert time.monotonic() - started < 4.5


# --- failures ---------------------------------------------------------------------------------------------------


def test_a_celery_client_gets_the_value_error_our_worker_raised_over_rpc(
    celery_rpc: celery.Celery, our_rpc_worker: WorkerProcess
) -> None:
    result = celery_rpc.send_task("interop.fail", ("kaboom",), queue="ours")

    with pytest.raises(ValueError) as raised:
        result.get(timeout=GET_TIMEOUT)
    assert str(raised.value) == "kaboom"
    assert result.state == "FAILURE"
    assert "ValueError: kaboom" in result.traceback


def test_our_client_gets_the_value_error_a_celery_worker_raised_over_rpc(ours_rpc: App, celery_rpc_worker: Any) -> None:
    result = ours_rpc.send_task("interop.fail", ("kaboom",), queue=QUEUE)

    with pytest.raises(ValueError) as raised:
        result.get(timeout=GET_TIMEOUT)
    assert str(raised.value) == "kaboom"
    assert result.state == "FAILURE"
    assert "ValueError: kaboom" in (result.traceback or "")
    assert "remote traceback" in raised.value.__notes__[0]


@pytest.mark.parametrize("direction", ["celery-client-our-worker", "our-client-celery-worker"])
def test_failures_read_across_over_redis(
    direction: str, celery_redis: celery.Celery, ours_redis: App, celery_redis_worker: Any
) -> None:
    if direction == "celery-client-our-worker":
        result: Any = celery_redis.send_task("interop.fail", ("kaboom",), queue="ours_redis")
    else:
        result = ours_redis.send_task("interop.fail", ("kaboom",), queue="interop_redis")

    with pytest.raises(ValueError) as raised:
        result.get(timeout=GET_TIMEOUT)
    assert str(raised.value) == "kaboom"
    assert result.state == "FAILURE"


def test_an_exception_class_our_client_may_not_rebuild_arrives_as_task_error(ours_redis: App) -> None:
    # A result in Celery's form naming a class of a module this process has not imported: never imported here.
    stored = {"status": "FAILURE", "task_id": "x", "traceback": "Traceback...", "children": [], "date_done": None,
              "result": {"exc_type": "Boom", "exc_message": ["no"], "exc_module": "interop_not_imported"}}  # fmt: skip
    client = redis.Redis.from_url(ours_redis.config.results.backend or "")
    task_id = f"foreign-{time.monotonic_ns()}"
    client.set(f"celery-task-meta-{task_id}", json.dumps({**stored, "task_id": task_id}), ex=60)

    with pytest.raises(TaskError) as raised:
        _result(ours_redis, task_id).get(timeout=GET_TIMEOUT)
    assert (raised.value.type_name, raised.value.message) == ("interop_not_imported.Boom", "no")


def _result(app: App, task_id: str) -> Any:
    from amqptasks.result import AsyncResult

    return AsyncResult(task_id, app=app, backend=app.result_backend)


def sig(app: App, name: str, args: tuple[Any, ...], queue: str) -> Signature:
    return Signature(name, args, options={"queue": queue}, app=app)


# --- redis:// results, both ways -------------------------------------------------------------------------------


def test_a_celery_client_reads_our_workers_result_from_redis_and_forget_removes_it(
    celery_redis: celery.Celery, ours_redis: App, redis_url: str
) -> None:
    result = celery_redis.send_task("math.add", (2, 3), queue="ours_redis")

    assert result.get(timeout=GET_TIMEOUT) == 5
    assert result.state == "SUCCESS" and result.date_done is not None

    # Our client reads the same key, and its forget() is Celery's too
    ours = _result(ours_redis, result.id)
    assert ours.get(timeout=GET_TIMEOUT) == 5
    ours.forget()
    assert celery_redis.AsyncResult(result.id).state == "PENDING"


def test_our_client_reads_a_celery_workers_result_from_redis_with_its_expiry(
    ours_redis: App, celery_redis: celery.Celery, celery_redis_worker: Any, redis_url: str
) -> None:
    result = ours_redis.send_task("math.add", (20, 22), queue="interop_redis")

    assert result.get(timeout=GET_TIMEOUT) == 42
    key = f"celery-task-meta-{result.id}"
    assert 0 < redis.Redis.from_url(redis_url).ttl(key) <= 3600  # result_expires on both sides
    celery_redis.AsyncResult(result.id).forget()
    assert _result(ours_redis, result.id).state == "PENDING"


def test_groups_read_across_over_redis(ours_redis: App, celery_redis: celery.Celery, celery_redis_worker: Any) -> None:
    from amqptasks.canvas import group

    # Ours, run by the Celery worker
    ours = group(sig(ours_redis, "math.add", (i, i), "interop_redis") for i in range(3)).apply_async()
    # Celery's, run by our worker
    theirs = celery.group(celery_redis.signature("math.add", (i, 1), queue="ours_redis") for i in range(3))()

    assert ours.get(timeout=GET_TIMEOUT) == [0, 2, 4]
    assert theirs.get(timeout=GET_TIMEOUT) == [1, 2, 3]


def test_saved_groups_restore_across_over_redis(
    ours_redis: App, celery_redis: celery.Celery, celery_redis_worker: Any
) -> None:
    from amqptasks.canvas import group
    from amqptasks.result import GroupResult

    # Ours saved (run by the Celery worker), restored by Celery; Celery's saved (run by ours), restored by us
    ours = group(sig(ours_redis, "math.add", (i, 100), "interop_redis") for i in range(3)).apply_async()
    assert isinstance(ours, GroupResult)
    ours.save()
    theirs = celery.group(celery_redis.signature("math.add", (i, 200), options={"queue": "ours_redis"})
                          for i in range(3))()  # fmt: skip
    theirs.save()

    by_celery = celery_redis.GroupResult.restore(ours.id)
    by_us = GroupResult.restore(theirs.id, ours_redis)

    assert [r.id for r in by_celery.results] == [r.id for r in ours.results]
    assert by_celery.get(timeout=GET_TIMEOUT) == [100, 101, 102]
    assert by_us is not None and [r.id for r in by_us] == [r.id for r in theirs.results]
    assert by_us.get(timeout=GET_TIMEOUT) == [200, 201, 202]
    by_us.delete()
    assert celery_redis.GroupResult.restore(theirs.id) is None


def test_a_celery_chord_over_redis_completes_on_our_worker(celery_redis: celery.Celery, ours_redis: App) -> None:
    header = [celery_redis.signature("math.add", (i, i), options={"queue": "ours_redis"}) for i in range(4)]
    callback = celery_redis.signature("math.tsum", options={"queue": "ours_redis"})

    result = celery.chord(header)(callback)

    assert result.get(timeout=GET_TIMEOUT) == 0 + 2 + 4 + 6


def test_our_chord_over_redis_completes_on_a_celery_worker(ours_redis: App, celery_redis_worker: Any) -> None:
    from amqptasks.canvas import chord

    header = [sig(ours_redis, "math.add", (i, 10), "interop_redis") for i in range(3)]
    result = chord(header, sig(ours_redis, "math.tsum", (), "interop_redis")).apply_async()

    assert result.get(timeout=GET_TIMEOUT) == 33


def test_a_chord_whose_member_fails_on_our_worker_fails_its_celery_callback(
    celery_redis: celery.Celery, ours_redis: App
) -> None:
    header = [celery_redis.signature("math.add", (1, 1), options={"queue": "ours_redis"}),
              celery_redis.signature("interop.fail", ("kaboom",), options={"queue": "ours_redis"})]  # fmt: skip
    callback = celery_redis.signature("math.tsum", options={"queue": "ours_redis"})

    result = celery.chord(header)(callback)

    # Celery's get() raises the failed member's own error first (it walks the parents) ...
    with pytest.raises(ValueError, match="kaboom"):
        result.get(timeout=GET_TIMEOUT)
    # ... and the callback never ran: it is stored as failed with Celery's ChordError
    callback_result = celery_redis.AsyncResult(result.id)
    deadline = time.monotonic() + GET_TIMEOUT
    while callback_result.state != "FAILURE" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert callback_result.state == "FAILURE"
    assert isinstance(callback_result.result, celery.exceptions.ChordError)
    assert "kaboom" in str(callback_result.result)


# --- expiry: REVOKED on both sides ------------------------------------------------------------------------------


def test_a_celery_clients_expired_task_on_our_worker_ends_revoked(
    celery_rpc: celery.Celery, our_rpc_worker: WorkerProcess
) -> None:
    result = celery_rpc.send_task("math.add", (1, 1), queue="ours", expires=datetime.now(UTC) - timedelta(seconds=1))

    with pytest.raises(celery.exceptions.TaskRevokedError, match="expired"):
        result.get(timeout=GET_TIMEOUT)
    assert result.state == "REVOKED"


def test_our_expired_task_on_a_celery_worker_reads_as_expired(ours_rpc: App, celery_rpc_worker: Any) -> None:
    result = ours_rpc.send_task("math.add", (1, 1), queue=QUEUE, expires=datetime.now(UTC) - timedelta(seconds=1))

    with pytest.raises(TaskExpired):
        result.get(timeout=GET_TIMEOUT)
    assert result.state == "REVOKED"
    assert isinstance(result.info, TaskRevoked)


# --- plain calls and their options, both ways --------------------------------------------------------------------


def test_a_celery_clients_calls_run_on_our_worker_with_their_options(
    celery_rpc: celery.Celery, our_rpc_worker: WorkerProcess
) -> None:
    sent = celery_rpc.send_task("math.add", (2, 3), queue="ours")
    zipped = celery_rpc.send_task("math.add", (20, 22), queue="ours", compression="zlib")
    callback = celery_rpc.signature("math.add", (10,), options={"queue": "ours"})
    linked = celery_rpc.send_task("math.add", (1, 2), queue="ours", link=callback)
    when = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    dated = celery_rpc.send_task("interop.echo", (when,), queue="ours")

    assert sent.get(timeout=GET_TIMEOUT) == 5
    assert zipped.get(timeout=GET_TIMEOUT) == 42
    assert linked.get(timeout=GET_TIMEOUT) == 3
    assert dated.get(timeout=GET_TIMEOUT) == when  # a datetime, both ways, in kombu's JSON tags


def test_our_calls_run_on_a_celery_worker_with_our_ids_and_options(ours_rpc: App, celery_rpc_worker: Any) -> None:
    delayed = ours_rpc.send_task("interop.record", (1, 2), queue=QUEUE)
    applied = ours_rpc.send_task("interop.record", (3,), {"k": "v"}, queue=QUEUE, priority=7)
    zipped = ours_rpc.send_task("interop.record", ("x" * 2000,), queue=QUEUE, compression="zlib")
    parent = ours_rpc.send_task("interop.record", ("parent",), queue=QUEUE,
                                link=sig(ours_rpc, "interop.record", ("linked",), QUEUE))  # fmt: skip

    runs = celery_rpc_worker.ran({delayed.id, applied.id, zipped.id, parent.id})

    assert (runs[delayed.id]["args"], runs[applied.id]["kwargs"]) == ([1, 2], {"k": "v"})
    assert runs[applied.id]["priority"] == 7
    assert runs[zipped.id]["args"] == ["x" * 2000]
    for task_id in (delayed.id, applied.id):
        assert (runs[task_id]["root_id"], runs[task_id]["parent_id"]) == (task_id, None)
    callback = celery_rpc_worker.ran_where(lambda run: run["parent_id"] == parent.id, "the link callback")
    assert callback["args"] == [f"recorded {parent.id}", "linked"]  # Celery prepends the parent's result
    assert delayed.get(timeout=GET_TIMEOUT) == f"recorded {delayed.id}"


def test_gzip_compressed_message_from_our_app_is_readable_by_kombu(ours_rpc: App, peers_vhost: BrokerURL) -> None:
    # kombu's Message is what a Celery worker decodes every delivery with; no Celery worker consumes 'fleet' here.
    from amqptasks.broker import open_blocking

    ours_rpc.send_task("interop.record", ("gzipped",), queue="fleet", compression="gzip")
    connection = open_blocking(peers_vhost, connection_name="interop gzip check")
    try:
        method, props, body = connection.channel().basic_get("fleet", auto_ack=True)
    finally:
        connection.close()
    assert method is not None

    message = kombu.message.Message(
        body=body, content_type=props.content_type, content_encoding=props.content_encoding, headers=props.headers
    )
    assert [repr(error) for _, error, _ in message.errors] == []
    assert message.decode()[0] == ["gzipped"]


# --- workflows that cross -----------------------------------------------------------------------------------------


def test_our_chain_runs_on_a_celery_worker_and_its_result_reaches_our_get(
    ours_rpc: App, celery_rpc_worker: Any
) -> None:
    from amqptasks.canvas import chain

    steps = [sig(ours_rpc, "math.add", args, QUEUE) for args in ((1, 2), (3,), (4,))]
    result = chain(*steps).apply_async()

    # Each later step carries our reply-to address (as Celery's freeze() sets it), so its result comes back here
    assert result.get(timeout=GET_TIMEOUT) == 10
    assert result.parent is not None and result.parent.get(timeout=GET_TIMEOUT) == 6


def test_a_celery_chain_runs_on_our_worker(celery_rpc: celery.Celery, our_rpc_worker: WorkerProcess) -> None:
    add = celery_rpc.signature
    result = celery.chain(add("math.add", (1, 2), options={"queue": "ours"}),
                          add("math.add", (3,), options={"queue": "ours"}))()  # fmt: skip

    assert result.get(timeout=GET_TIMEOUT) == 6
