"""Messages the worker cannot or must not run: bad input, expired tasks, poison messages.

Whatever a message holds, the worker settles it (dead-letters it with a log line saying why, or drops an
expired one) and goes on with the next one.
"""

from __future__ import annotations

import logging
import zlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pika
import pytest

from amqptasks.broker import BrokerURL
from amqptasks.constants import REDELIVERIES_HEADER
from amqptasks.dlq.reader import record_key
from tests.cli_helpers import run
from tests.hostile_corpus import CANARY_FILE, CANARY_TASK, GOOD_TASK, Hostile, corpus
from tests.worker_helpers import (
    YAML,
    Project,
    celery_headers,
    death,
    get_all,
    make_app,
    publish_raw,
    ready,
    run_worker,
    wait_until,
    worker_burst,
)

pytestmark = pytest.mark.broker

GOOD_BODY = '[[2, 3], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]'


@dataclass(frozen=True)
class BadInput:
    name: str
    why: str  # what the log line says
    body: str | bytes = GOOD_BODY
    task: str | None = "math.add"
    content_type: str = "application/json"
    headers: dict[str, Any] = field(default_factory=dict)


BAD_INPUTS = [
    BadInput("undecodable-json", "undecodable: body is not valid json", body='[[2, 3], {"oops"'),
    BadInput("not-args-kwargs-embed", "bad-body: body must be [args, kwargs, embed]", body='{"args": [2, 3]}'),
    BadInput(
        "kwargs-not-a-mapping",
        "bad-body: body must be [args, kwargs, embed] with kwargs a mapping",
        body="[[2, 3], [], {}]",
    ),
    BadInput("unknown-task", "unknown-task: no task named 'math.nope' is registered", task="math.nope"),
    BadInput("text-plain", "content-type: unsupported content type 'text/plain'", content_type="text/plain"),
    BadInput("missing-task-header", "missing-header: no 'task' header", task=None),
    BadInput("wrong-arguments", "bad-arguments: math.add(): missing a required argument: 'y'", body="[[2], {}, {}]"),
    BadInput(
        "unexpected-kwarg",
        "bad-arguments: math.add(): got an unexpected keyword argument 'z'",
        body='[[2, 3], {"z": 1}, {}]',
    ),
    BadInput(
        "eta-not-a-date", "bad-header: eta header 'tomorrow' is not an ISO 8601 date-time", headers={"eta": "tomorrow"}
    ),
    BadInput("unknown-compression", "compression: unsupported compression 'rar'", headers={"compression": "rar"}),
    BadInput(
        "too-big-body",  # over this test's broker.max_message_size of 64KiB
        "oversized: body is 70,014 bytes, over the limit of 65,536 (broker.max_message_size)",
        body='[["' + "x" * 70_000 + '"], {}, {}]',
    ),
    BadInput(
        "decompression-bomb",  # ~1 KiB that would inflate to 8 MiB, over 16 x 64KiB
        "oversized: body inflates (application/x-gzip) to over 1,048,576 bytes",
        body=zlib.compress(b"[[2, 3], {}, {}" + b" " * (8 * 1024 * 1024) + b"]", 9),
        headers={"compression": "application/x-gzip"},
    ),
    BadInput(
        "truncated-compression",
        "undecodable: cannot decompress (application/x-gzip): the data is truncated",
        body=zlib.compress(GOOD_BODY.encode())[:-8],
        headers={"compression": "application/x-gzip"},
    ),
]

#: A limit small enough for the oversized cases above to stay small.
LIMITED = "broker: {max_message_size: 64KiB}\n" + YAML


def test_bad_inputs_are_dead_lettered_with_a_reason_and_the_worker_goes_on(
    vhost: BrokerURL, channel: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a queue holding one message of each bad kind, then a good task
    caplog.set_level(logging.INFO, logger="amqptasks")
    app = make_app(vhost, LIMITED)
    results: list[int] = []

    @app.task(name="math.add")
    def add(x: int, y: int) -> None:
        results.append(x + y)

    add.apply_async((1, 1), compression="zlib")  # compressed and under the limit: runs
    for case in BAD_INPUTS:
        headers = celery_headers(case.task, case.name) if case.task else {"id": case.name, "lang": "py"}
        publish_raw(channel, "work", case.body, headers={**headers, **case.headers},
                    content_type=case.content_type, correlation_id=case.name)  # fmt: skip
    add.delay(20, 22)

    # When a burst worker drains the queue
    worker = run_worker(app)
    app.close()

    # Then the good tasks ran, the last one after all of them
    assert results == [2, 42] and worker.processed == len(BAD_INPUTS) + 2
    # And every bad message is in the DLQ, rejected, with a log line saying why
    dead = {props.correlation_id: props for _, props, _ in get_all(channel, "work.dlq")}
    assert sorted(dead) == sorted(case.name for case in BAD_INPUTS)
    assert {death(props)["reason"] for props in dead.values()} == {"rejected"}
    rejected = [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("amqptasks") and "rejected to the DLQ" in r.getMessage()
    ]
    for case in BAD_INPUTS:
        [line] = [line for line in rejected if case.name in line]
        assert case.why in line, f"{case.name}: {line}"
    assert ready(channel, "work") == 0


def test_expired_task_is_dropped_and_logged_not_run_nor_dead_lettered(
    vhost: BrokerURL, channel: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a task whose expiry passed while it waited in the queue, and one that is still valid
    caplog.set_level(logging.INFO, logger="amqptasks")
    app = make_app(vhost)
    ran: list[str] = []

    @app.task(name="news.push")
    def push(item: str) -> None:
        ran.append(item)

    stale = push.apply_async(("stale",), expires=datetime.now(UTC) - timedelta(seconds=5))
    push.apply_async(("fresh",), expires=60)

    # When a burst worker drains the queue
    run_worker(app)
    app.close()

    # Then only the valid one ran; the expired one was dropped with a log line, not dead-lettered
    assert ran == ["fresh"]
    assert any(f"news.push[{stale.id}] expired at" in r.getMessage() and "dropped" in r.getMessage()
               for r in caplog.records)  # fmt: skip
    assert get_all(channel, "work.dlq") == [] and ready(channel, "work") == 0


def test_expired_task_is_dead_lettered_when_the_worker_is_told_to(vhost: BrokerURL, channel: Any) -> None:
    # Given an expired task
    app = make_app(vhost)

    @app.task(name="news.push")
    def push() -> None:
        raise AssertionError("an expired task must not run")

    stale = push.apply_async(expires=datetime.now(UTC) - timedelta(seconds=1))

    # When a burst worker with dead_letter_expired=True drains the queue
    run_worker(app, dead_letter_expired=True)
    app.close()

    # Then it is in the DLQ
    [(_, props, _)] = get_all(channel, "work.dlq")
    assert props.correlation_id == stale.id


# --- redelivered messages that killed nothing ----------------------------------------------------------------
# Tasks that kill their worker process are tested with real processes in tests/test_worker_faults.py.


def test_message_redelivered_after_its_consumer_went_away_runs_again_uncharged(vhost: BrokerURL, channel: Any) -> None:
    # Given a task message that a consumer took and then lost without acknowledging (redelivered=True), while no
    # worker process that ran it died
    app = make_app(vhost)
    seen: list[Any] = []

    @app.task(name="sync.once", bind=True)
    def once(self: Any) -> None:
        seen.append((self.request.redelivered, self.request.headers.get(REDELIVERIES_HEADER)))

    once.delay()
    taker = channel.connection.channel()
    method, _, _ = taker.basic_get("work", auto_ack=False)
    assert method is not None
    taker.close()

    # When a worker drains the queue
    run_worker(app)
    app.close()

    # Then the task ran once, in place, not charged with killing anything
    assert seen == [(True, None)]
    assert get_all(channel, "work.dlq") == []


QUORUM_YAML = """
topology:
  queues:
    - {name: critical, type: quorum, delivery_limit: 2, dead_letter: auto}
"""


def test_innocent_redelivered_on_a_quorum_queue_is_sent_again_fresh_and_never_reaches_the_delivery_limit(
    vhost: BrokerURL, channel: Any
) -> None:
    # Given a task on a quorum queue with delivery_limit 2 that consumers took and lost three times
    app = make_app(vhost, QUORUM_YAML)
    seen: list[Any] = []

    @app.task(name="sync.critical", queue="critical", bind=True)
    def critical(self: Any) -> None:
        seen.append(self.request.headers.get("x-delivery-count"))

    critical.delay()
    for _ in range(2):
        taker = channel.connection.channel()
        method, _, _ = taker.basic_get("critical", auto_ack=False)
        assert method is not None
        taker.close()

    # When a worker drains the queue (the broker counts 2 deliveries: one more loss would dead-letter it)
    run_worker(app, ["critical"])
    app.close()

    # Then it ran once, as a fresh copy that starts the broker's count again; nothing is dead-lettered
    assert seen == [None]
    assert get_all(channel, "critical.dlq") == [] and ready(channel, "critical") == 0


# --- the hostile corpus, through a worker subprocess and the DLQ tools --------------------------------------

CORPUS_TASKS = f"""
@app.task(name="{GOOD_TASK}", bind=True)
def good(self, x):
    record(id=self.request.id, x=x)

@app.task(name="{CANARY_TASK}")
def canary():
    record(canary=True)
"""


def _publish_corpus(channel: Any, entries: list[Hostile]) -> dict[str, Hostile]:
    """Each hostile message published to the work queue; returns them by the id their dead letter is known by."""
    published: dict[str, Hostile] = {}
    channel.confirm_delivery()
    for i, entry in enumerate(entries):
        task_id = f"hostile-{i}-{entry.name}"
        headers = {k: v for k, v in {**celery_headers(GOOD_TASK, task_id), **entry.headers}.items() if v is not None}
        body = entry.body()
        props = pika.BasicProperties(
            headers=headers, content_type=entry.content_type, content_encoding=entry.content_encoding,
            correlation_id=task_id if entry.with_id else None, delivery_mode=2,
        )  # fmt: skip
        channel.basic_publish("", "work", body, props, mandatory=True)
        published[task_id if entry.with_id else record_key(headers, None, body)] = entry
    return published


@pytest.mark.timeout(180)
def test_hostile_corpus_gets_specific_reasons_and_the_dlq_tools_read_every_row(
    tmp_path: Path, vhost: BrokerURL, channel: Any
) -> None:
    # Given 60 good tasks with the hostile corpus (one message of each kind) in the middle of them
    Path(CANARY_FILE).unlink(missing_ok=True)
    project = Project.create(tmp_path, vhost, CORPUS_TASKS)
    sender = project.app()
    good = [sender.send_task(GOOD_TASK, (i,)).id for i in range(30)]
    entries = corpus()
    published = _publish_corpus(channel, entries)
    good += [sender.send_task(GOOD_TASK, (i,)).id for i in range(30, 60)]
    sender.close()
    hostile = {k: e for k, e in published.items() if e.reason is not None}

    # When a burst worker drains the queue
    result = worker_burst(project, "-Q", "work")

    # Then it exited 0 with no traceback and no "internal error"; every good task ran once, the valid odd ones too
    assert result.code == 0, str(result)
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr[-3000:]
    ran = Counter(r["id"] for r in project.records() if "id" in r)
    valid_odd = {k for k, e in published.items() if e.reason is None}
    assert {i: n for i, n in ran.items() if n != 1} == {}, "tasks that ran more than once"
    assert set(ran) == set(good) | valid_odd, f"lost: {set(good) | valid_odd - set(ran)}"
    assert not any("canary" in r for r in project.records()) and not Path(CANARY_FILE).exists()
    # And exactly the hostile messages are dead-lettered, each with its specific reason in `dlq list`
    config = str(tmp_path / "app.yaml")
    listed = run(["dlq", "list", "work", config, "--json", "--limit", "1000"], cwd=tmp_path, env=project.env)
    assert listed.code == 0, str(listed)
    rows = listed.json()
    keyed = {row["id"] or "": row for row in rows}
    print(f"\nhostile corpus: {len(entries)} kinds, {len(hostile)} dead-lettered, {len(rows)} DLQ rows, "
          f"{len(ran)} ran of {len(good) + len(valid_odd)} valid")  # fmt: skip
    assert len(rows) == len(hostile)
    idless = [row for row in rows if not row["id"]]
    for key, entry in hostile.items():
        if entry.with_id:
            assert str(keyed[key]["last_error"]).startswith(entry.reason or "?"), f"{entry.name}: {keyed[key]}"
    wanted = sorted(str(e.reason) for e in hostile.values() if not e.with_id)
    assert len(idless) == len(wanted), idless
    errors = [str(r["last_error"]) for r in idless]
    assert all(any(e.startswith(w) for e in errors) for w in wanted), errors
    # And the table form prints every row (the 200,000-deep body among them), exit 0
    table = run(["dlq", "list", "work", config, "--limit", "1000"], cwd=tmp_path, env=project.env)
    assert table.code == 0 and len(table.stdout.splitlines()) == len(hostile) + 1, str(table)
    assert "hostile-3-deep-json" in table.stdout and "body nests too deeply" in table.stdout
    # And `dlq show` shows each of them
    for key in (k for k in hostile if not k.startswith("body:")):
        shown = run(["dlq", "show", key, "work", config], cwd=tmp_path, env=project.env)
        assert shown.code == 0 and shown.json()["last_error"], str(shown)[:2000]
    # And replay sends them all back, a worker dead-letters them again, and purge empties the DLQ
    replayed = run(["dlq", "replay", "work", config, "--all", "--yes"], cwd=tmp_path, env=project.env)
    assert replayed.code == 0 and f"replayed {len(hostile)} message(s)" in replayed.stdout, str(replayed)
    again = worker_burst(project, "-Q", "work")
    assert again.code == 0 and "Traceback" not in again.stderr, str(again)[-3000:]
    # (The replay resets the retries header to 0: the two whose only fault was that header now run.)
    healed = {k for k, e in hostile.items() if e.name.startswith("retries-")}
    # (RabbitMQ dead-letters asynchronously; a 20 MiB body takes a moment to land.)
    wait_until(lambda: ready(channel, "work.dlq") == len(hostile) - len(healed), 15, "the others back in the DLQ")
    assert ready(channel, "work") == 0
    assert {r["id"] for r in project.records() if r.get("id") in healed} == healed
    purged = run(["dlq", "purge", "work", config, "--yes"], cwd=tmp_path, env=project.env)
    assert purged.code == 0 and f"purged {len(hostile) - len(healed)} message(s)" in purged.stdout, str(purged)
    assert ready(channel, "work.dlq") == 0 and ready(channel, "work") == 0
