"""Celery interop on the real broker, with the real ``celery`` package, both ways.

A Celery 5 client's messages decode and run on an amqptasks App; messages our App publishes run on a real Celery
worker (a subprocess of ``tests/celery_interop_app.py``, which appends one JSON line per task run to a file).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import celery
import kombu.message
import pytest
from kombu import Queue

from amqptasks import App
from amqptasks.broker import BrokerURL
from amqptasks.config import load_config_text
from amqptasks.message.protocol import TaskMessage
from amqptasks.tasks.dispatch import UnknownTask, decode, execute
from amqptasks.tasks.signature import Signature
from tests.celery_interop_app import MAX_PRIORITY, QUEUE

REPO = Path(__file__).resolve().parents[1]
WORKER_READY_TIMEOUT = 15.0
RECORD_TIMEOUT = 20.0

TOPOLOGY = f"""
topology:
  provision: true
  queues:
    - {{name: {QUEUE}, max_priority: {MAX_PRIORITY}}}
"""


@pytest.fixture
def app(vhost: BrokerURL) -> Iterator[App]:
    """Our App: ``math.add`` to run what Celery sends, ``interop.record`` to send to the Celery worker."""
    config = load_config_text(TOPOLOGY, "interop.yaml", broker_url=vhost.to_url())
    application = App(config=config, broker_url=vhost.to_url())

    @application.task(name="math.add", queue=QUEUE)
    def add(x: int, y: int) -> int:
        return x + y

    @application.task(name="interop.record", queue=QUEUE)
    def record(*args: Any, **kwargs: Any) -> None: ...

    yield application
    application.close()


@pytest.fixture
def client(vhost: BrokerURL, app: App) -> Iterator[Any]:
    """A Celery client on the test vhost; the queue is ours (provisioned), declared alike on Celery's side."""
    app.provision()
    celery_app = celery.Celery("interop-client", broker=vhost.to_url(), set_as_current=False)
    celery_app.conf.task_queues = [Queue(QUEUE, queue_arguments={"x-max-priority": MAX_PRIORITY})]
    celery_app.conf.task_default_queue = QUEUE
    yield celery_app
    celery_app.close()


def received(channel: Any) -> tuple[Any, TaskMessage]:
    """The next message in the queue, decoded by us. Celery publishes unconfirmed, so allow it a moment."""
    deadline = time.monotonic() + 5
    while True:
        method, props, body = channel.basic_get(QUEUE, auto_ack=True)
        if method is not None:
            message = decode(
                body, props.headers, props.content_type, props.content_encoding, props.correlation_id, props.reply_to
            )
            return props, message
        assert time.monotonic() < deadline, f"no message arrived in queue {QUEUE!r}"
        time.sleep(0.02)


# --- a Celery client → our machinery ------------------------------------------------------------------------


def test_celery_send_task_runs_on_our_app_with_celerys_task_id(client: Any, app: App, channel: Any) -> None:
    result = client.send_task("math.add", args=(2, 3), kwargs={}, queue=QUEUE)

    props, message = received(channel)

    assert execute(app, message) == 5
    assert message.id == result.id == props.correlation_id
    assert (message.task, message.args, dict(message.kwargs)) == ("math.add", (2, 3), {})
    assert (message.retries, message.root_id, message.parent_id) == (0, result.id, None)
    assert message.origin.startswith(f"gen{os.getpid()}@")
    assert message.reply_to == props.reply_to and message.reply_to


def test_celery_apply_async_options_survive_decoding(client: Any, app: App, channel: Any) -> None:
    @client.task(name="math.add")
    def add(x: int, y: int) -> int: ...

    sent_at = datetime.now(UTC)
    result = add.apply_async(
        (2,),
        {"y": 3},
        queue=QUEUE,
        link=add.s(10),
        link_error=client.signature("errors.report", kwargs={"severity": "high"}, immutable=True),
        expires=60,
        countdown=30,
        priority=7,
    )

    props, message = received(channel)

    assert execute(app, message) == 5
    assert (message.id, message.args, dict(message.kwargs)) == (result.id, (2,), {"y": 3})
    assert props.priority == 7
    assert message.expires is not None and message.expires.tzinfo is not None
    assert abs(message.expires - (sent_at + timedelta(seconds=60))) < timedelta(seconds=5)
    assert message.eta is not None and message.eta.tzinfo is not None
    assert abs(message.eta - (sent_at + timedelta(seconds=30))) < timedelta(seconds=5)
    [callback] = [Signature.from_dict(data, app) for data in message.callbacks]
    assert (callback.task, callback.args, callback.immutable) == ("math.add", (10,), False)
    assert callback(5) == 15  # a link gets the parent's result first, as in Celery
    [errback] = [Signature.from_dict(data) for data in message.errbacks]
    assert (errback.task, errback.kwargs, errback.immutable) == ("errors.report", {"severity": "high"}, True)


@pytest.mark.parametrize("compression", ["zlib", "gzip"])
def test_compressed_celery_message_decodes(client: Any, app: App, channel: Any, compression: str) -> None:
    client.send_task("math.add", args=(20, 22), kwargs={}, queue=QUEUE, compression=compression)

    props, message = received(channel)

    assert props.headers["compression"] == "application/x-gzip"  # kombu: both names mean zlib
    assert execute(app, message) == 42


def test_celery_task_unknown_to_our_app_raises_unknown_task(client: Any, app: App, channel: Any) -> None:
    client.send_task("math.multiply", args=(2, 3), kwargs={}, queue=QUEUE)

    _, message = received(channel)

    with pytest.raises(UnknownTask) as raised:
        execute(app, message)
    assert raised.value.reason == "unknown-task"
    assert "no task named 'math.multiply' is registered" in str(raised.value)


def test_naive_eta_and_expires_from_celery_are_read_as_utc(client: Any, channel: Any) -> None:
    naive = datetime(2030, 1, 1, 12, 0)
    client.send_task("math.add", args=(1, 2), kwargs={}, queue=QUEUE, eta=naive, expires=naive + timedelta(hours=1))

    _, message = received(channel)

    assert message.eta == naive.replace(tzinfo=UTC)
    assert message.expires == naive.replace(tzinfo=UTC) + timedelta(hours=1)


def test_datetime_argument_from_celery_arrives_as_a_datetime(client: Any, channel: Any) -> None:
    when = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    client.send_task("math.add", args=(when, 1), kwargs={}, queue=QUEUE)

    _, message = received(channel)

    assert message.args == (when, 1)


# --- our publisher → a real Celery worker -----------------------------------------------------------------------


class CeleryWorker:
    """``celery worker`` in a subprocess on the test vhost; what it ran is in ``records``."""

    def __init__(self, tmp_path: Path) -> None:
        self.records = tmp_path / "records.jsonl"
        self.log = tmp_path / "worker.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, vhost: BrokerURL, channel: Any) -> None:
        env = {**os.environ, "INTEROP_BROKER_URL": vhost.to_url(), "INTEROP_RECORD_FILE": str(self.records)}
        command = [sys.executable, "-m", "celery", "-A", "tests.celery_interop_app", "worker", "-Q", QUEUE]
        command += ["--pool", "solo", "--concurrency", "1", "-l", "info"]
        command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        self._wait_until_consuming(self.process, channel)

    def _wait_until_consuming(self, process: subprocess.Popen[bytes], channel: Any) -> None:
        # Publishing earlier would work too (the queue holds the messages), but a worker that failed to start
        # would then look like an interop failure. A passive declare counts consumers live; the management
        # API's count lags by up to its 5 s statistics interval.
        deadline = time.monotonic() + WORKER_READY_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"the Celery worker exited with {process.returncode}:\n{self.tail()}")
            if channel.queue_declare(QUEUE, passive=True).method.consumer_count > 0:
                return
            time.sleep(0.05)
        pytest.fail(f"the Celery worker did not consume from {QUEUE!r} within {WORKER_READY_TIMEOUT}s:\n{self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def ran(self, count: int) -> list[dict[str, Any]]:
        """The first *count* task runs, waiting up to RECORD_TIMEOUT seconds for them."""
        deadline = time.monotonic() + RECORD_TIMEOUT
        while time.monotonic() < deadline:
            lines = self.records.read_text().splitlines() if self.records.exists() else []
            if len(lines) >= count:
                return [json.loads(line) for line in lines]
            time.sleep(0.05)
        pytest.fail(f"the Celery worker ran {len(lines)} of {count} tasks in {RECORD_TIMEOUT}s:\n{self.tail()}")

    def stop(self) -> None:
        """Warm shutdown (SIGTERM); SIGKILL if it does not exit in 5 s."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


@pytest.fixture
def worker(vhost: BrokerURL, app: App, channel: Any, tmp_path: Path) -> Iterator[CeleryWorker]:
    """A Celery worker consuming from our provisioned queue (it declares the queue alike)."""
    app.provision()
    celery_worker = CeleryWorker(tmp_path)
    try:
        celery_worker.start(vhost, channel)
        yield celery_worker
    finally:
        celery_worker.stop()


def by_id(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {record["id"]: record for record in records}


def test_celery_worker_runs_delay_apply_async_and_send_task_with_our_ids(app: App, worker: CeleryWorker) -> None:
    record = app.tasks["interop.record"]
    delayed = record.delay(1, 2)
    applied = record.apply_async((3,), {"k": "v"}, priority=7)
    sent = app.send_task("interop.record", ["sent"], {"x": 1})

    runs = by_id(worker.ran(3))

    assert set(runs) == {delayed.id, applied.id, sent.id}
    assert (runs[delayed.id]["args"], runs[delayed.id]["kwargs"]) == ([1, 2], {})
    assert (runs[applied.id]["args"], runs[applied.id]["kwargs"]) == ([3], {"k": "v"})
    assert runs[applied.id]["priority"] == 7
    assert (runs[sent.id]["args"], runs[sent.id]["kwargs"]) == (["sent"], {"x": 1})
    for task_id, run in runs.items():
        assert (run["task"], run["retries"], run["root_id"], run["parent_id"]) == ("interop.record", 0, task_id, None)


def test_celery_worker_applies_link_callbacks_our_app_attached(app: App, worker: CeleryWorker) -> None:
    record = app.tasks["interop.record"]
    parent = record.apply_async(("parent",), link=record.s("linked"))

    runs = worker.ran(2)

    first, callback = runs
    assert (first["id"], first["args"]) == (parent.id, ["parent"])
    # Celery prepends the parent's return value to the callback's arguments, and chains the ids.
    assert callback["args"] == [f"recorded {parent.id}", "linked"]
    assert (callback["root_id"], callback["parent_id"]) == (parent.id, parent.id)


def test_zlib_compressed_message_from_our_app_runs_on_celery_worker(app: App, worker: CeleryWorker) -> None:
    record = app.tasks["interop.record"]
    zipped = record.apply_async(("zipped", "x" * 2000), {"size": "big"}, compression="zlib")

    [run] = worker.ran(1)

    assert (run["id"], run["args"], run["kwargs"]) == (zipped.id, ["zipped", "x" * 2000], {"size": "big"})


def test_gzip_compressed_message_from_our_app_is_readable_by_kombu(app: App, channel: Any) -> None:
    # kombu's Message is what a Celery worker decodes every delivery with; a worker run would only add a timeout.
    app.tasks["interop.record"].apply_async(("gzipped",), compression="gzip")
    [(_, props, body)] = [channel.basic_get(QUEUE, auto_ack=True)]

    message = kombu.message.Message(
        body=body, content_type=props.content_type, content_encoding=props.content_encoding, headers=props.headers
    )

    # A worker's kombu consumer checks these errors before the body (kombu.messaging.Consumer._receive_callback).
    assert [repr(error) for _, error, _ in message.errors] == []
    assert message.decode()[0] == ["gzipped"]
