"""``with app.batch():`` / ``async with app.abatch():`` as a user runs them: a publisher process of its own, its
messages counted on the real broker.

Each test writes a small publisher script into a project directory and runs it in a subprocess; the script prints
what the user's code saw (results, the error) as JSON, and the test checks the queue holds exactly those messages.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from amqptasks.broker import BrokerURL
from amqptasks.constants import ENV_BROKER_URL, ENV_CONFIG
from tests.worker_helpers import Project, get_all

pytestmark = pytest.mark.broker

TASKS = """
@app.task(name="shop.add")
def add(x, y):
    return x + y
"""

#: The script's prelude: the project's app, and ``report(**fields)`` printing one JSON object.
PRELUDE = """
import json, os, sys
from amqptasks import errors
from tasks import app, add

def report(**fields):
    print(json.dumps(fields, default=str), flush=True)
"""


@pytest.fixture
def project(tmp_path: Path, vhost: BrokerURL) -> Project:
    return Project.create(tmp_path, vhost, TASKS)


def publish(project: Project, body: str, timeout: float = 60) -> dict[str, Any]:
    """Run *body* (after PRELUDE) as a publisher process in the project; what it reported, merged."""
    script = project.path / "publisher.py"
    script.write_text(PRELUDE + textwrap.dedent(body), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in (ENV_BROKER_URL, ENV_CONFIG)}
    env.update(project.env)
    done = subprocess.run([sys.executable, str(script)], cwd=project.path, env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    reported: dict[str, Any] = {}
    for line in done.stdout.splitlines():
        reported.update(json.loads(line))
    return reported


def ids_in(channel: Any, queue: str = "work") -> list[str]:
    return [props.correlation_id for _, props, _ in get_all(channel, queue)]


def test_every_delay_in_a_batch_is_confirmed_when_the_block_ends(project: Project, channel: Any) -> None:
    # Given a publisher that calls delay() 2,000 times inside app.batch()
    reported = publish(
        project,
        """
        with app.batch() as results:
            ids = [add.delay(n, n).id for n in range(2000)]
        report(ids=ids, results=[r.id for r in results])
    """,
    )

    # Then when the block ended every message was on the broker: the queue holds exactly those 2,000, once each
    assert reported["results"] == reported["ids"] and len(set(reported["ids"])) == 2000
    assert sorted(ids_in(channel)) == sorted(reported["ids"])


def test_an_unroutable_message_in_a_batch_is_reported_with_the_results_of_the_others(
    project: Project, channel: Any
) -> None:
    # Given a batch of 20 tasks, the 8th sent to a routing key no queue is bound to
    reported = publish(
        project,
        """
        sent = []
        try:
            with app.batch():
                for n in range(20):
                    key = "nowhere.run" if n == 7 else "work.run"
                    sent.append(add.apply_async((n, n), exchange="tasks", routing_key=key).id)
        except errors.BatchPublishError as error:
            report(sent=sent, message=str(error), failed=[(p, r.id, why) for p, r, why in error.failed],
                   confirmed=[r.id for r in error.results], unknown=len(error.unknown))
        else:
            report(sent=sent, message="no error")
    """,
    )

    # Then one error names the unroutable one, and the 19 others are confirmed and in the queue
    sent = reported["sent"]
    assert reported["failed"] == [[7, sent[7], "unroutable"]], reported["message"]
    assert reported["confirmed"] == sent[:7] + sent[8:] and reported["unknown"] == 0
    assert "1 of 20 messages were not stored (#7 unroutable)" in reported["message"]
    assert sorted(ids_in(channel)) == sorted(reported["confirmed"])


def test_an_exception_inside_the_block_still_settles_what_was_sent(project: Project, channel: Any) -> None:
    # Given a batch whose code raises after 300 delay() calls
    reported = publish(
        project,
        """
        sent = []
        try:
            with app.batch():
                for n in range(300):
                    sent.append(add.delay(n, n).id)
                raise ValueError("bad row 301")
        except ValueError as exc:
            report(sent=sent, raised=str(exc))
    """,
    )

    # Then the user's exception propagates, and the 300 sent before it are confirmed in the queue
    assert reported["raised"] == "bad row 301"
    assert sorted(ids_in(channel)) == sorted(reported["sent"])


def test_nested_blocks_join_the_outer_batch_and_other_threads_publish_one_by_one(
    project: Project, channel: Any
) -> None:
    # Given an outer batch with an inner block, and a thread publishing while the batch is open
    reported = publish(
        project,
        """
        import threading
        with app.batch() as outer:
            first = add.delay(1, 1).id
            with app.batch() as inner:
                second = add.delay(2, 2).id
            inner_ids = [r.id for r in inner]
            box = []
            thread = threading.Thread(target=lambda: box.append(add.delay(3, 3).id))
            thread.start()
            thread.join()
        report(outer=[r.id for r in outer], inner=inner_ids, first=first, second=second, other=box[0])
    """,
    )

    # Then the inner block joined the outer one, the thread's task is not part of it, and all three were stored
    assert reported["outer"] == [reported["first"], reported["second"]] == reported["inner"]
    assert sorted(ids_in(channel)) == sorted([reported["first"], reported["second"], reported["other"]])


def test_a_forked_child_inside_a_batch_publishes_its_own_tasks_confirmed(project: Project, channel: Any) -> None:
    # Given a batch in which the process forks, and the child publishes a task and exits
    reported = publish(
        project,
        """
        with app.batch() as results:
            parent = [add.delay(n, n).id for n in range(100)]
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(read)
                child = add.delay(7, 7).id  # returns once confirmed: the parent's batch is not the child's
                os.write(write, child.encode())
                os._exit(0)
            os.close(write)
            _, status = os.waitpid(pid, 0)
            child = os.read(read, 100).decode()
        report(parent=parent, child=child, status=status, results=len(results))
    """,
    )

    # Then the child's task is on the broker too, and the parent's batch holds only its own 100
    assert reported["status"] == 0 and reported["results"] == 100
    assert sorted(ids_in(channel)) == sorted([*reported["parent"], reported["child"]])


def test_abatch_collects_delay_and_adelay_in_a_coroutine(project: Project, channel: Any) -> None:
    # Given a coroutine publishing 500 tasks with delay() and adelay() inside app.abatch()
    reported = publish(
        project,
        """
        import asyncio

        async def main():
            async with app.abatch() as results:
                sent = [add.delay(n, n).id for n in range(250)]
                sent += [(await add.adelay(n, n)).id for n in range(250)]
            report(sent=sent, results=[r.id for r in results])
            await app.aclose()

        asyncio.run(main())
    """,
    )

    # Then all 500 were confirmed when the block ended
    assert reported["results"] == reported["sent"] and len(set(reported["sent"])) == 500
    assert sorted(ids_in(channel)) == sorted(reported["sent"])
