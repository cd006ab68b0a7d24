"""Chords without a result store: the members' states meet in a queue.

Each member of a chord hands its final state to the durable queue ``amqptasks.chord.<group id>`` (declared by
the publisher, ``x-expires`` one day). The ``amqptasks.chord_unlock`` task, published with the members, counts
that queue with a passive declare and retries itself every half second (backing off to 5 s) until every member
is in (a member that ran twice counts once); then it reads the states, orders them by ``group_index``,
publishes the callback with the list of results, and deletes the queue. A member that will never run
(revoked, expired, rejected) reports that state, so its chord fails at once. The states are acknowledged only
by deleting the queue after the callback was published, so an unlock that dies half-way leaves them for its
next attempt.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from amqptasks.broker.connection import connect
from amqptasks.errors import AmqpTasksError
from amqptasks.results.exceptions import describe, exception_payload
from amqptasks.results.middleware import CHORD_UNLOCK, chord_queue
from amqptasks.results.states import FAILURE, SUCCESS, decode, state_message
from amqptasks.tasks.signature import Signature

if TYPE_CHECKING:
    from amqptasks.app import App
    from amqptasks.tasks.task import Task

#: Seconds between two counts of a chord's queue, growing (by UNLOCK_INTERVAL every 20 counts) up to the max: a
#: chord whose member never reports (lost) is not polled every half second until its queue expires.
UNLOCK_INTERVAL = 0.5
UNLOCK_MAX_INTERVAL = 5.0


class ChordError(AmqpTasksError):
    """A member of a chord failed, so its callback never ran."""


def queue_arguments(app: App) -> dict[str, Any]:
    return {"x-expires": app.config.results.result_expires * 1000}


def declare_queue(app: App, group_id: str) -> None:
    """The publisher declares a chord's queue before publishing its members."""
    connection = _connect(app)
    try:
        connection.channel().queue_declare(chord_queue(group_id), durable=True, arguments=queue_arguments(app))
    finally:
        connection.close()


def _connect(app: App) -> Any:
    return connect(app.config.broker, "amqptasks chord")


def unlock(task: Task[Any, Any], group_id: str, size: int, callback: Mapping[str, Any]) -> None:
    """The body of ``amqptasks.chord_unlock``."""
    app = task.app
    connection = _connect(app)
    try:
        channel = connection.channel()
        name = chord_queue(group_id)
        count = int(channel.queue_declare(name, passive=True).method.message_count)
        by_index: dict[int, dict[str, Any]] = {}
        if count >= size:
            # A member that ran twice (redelivered, or sent again after a failed hand-off) is in twice: count
            # each member once. The states stay unacked, so they are back in the queue if the unlock waits on.
            for _ in range(count):
                method, properties, body = channel.basic_get(name, auto_ack=False)
                if method is None:
                    break
                by_index.setdefault(int((properties.headers or {}).get("group_index", 0)), decode(body))
        if len(by_index) < size:
            connection.close()  # hands back what was read before waiting
            wait = min(UNLOCK_MAX_INTERVAL, UNLOCK_INTERVAL * (1 + task.request.retries // 20))
            if app.config.delays.enabled:
                task.retry(countdown=wait)
            time.sleep(wait)  # no delay tiers: wait here rather than spin through the queue
            task.retry(countdown=0)
        states = sorted(by_index.items())
        sig = Signature.from_dict(callback, app)
        failed = [meta for _, meta in states if meta.get("status") != SUCCESS]
        if failed:
            _fail(app, task, sig, group_id, failed[0])
        else:
            reply_to = task.request.reply_to  # the chord's publisher, when it waits through rpc://
            options: dict[str, Any] = {"reply_to": reply_to} if reply_to else {}
            backend = app.result_backend
            if not reply_to and backend is not None and backend.uses_reply_to:
                options["ignore_result"] = True
            sig.apply_async(([meta.get("result") for _, meta in states],), **options)
        channel.queue_delete(name)
    finally:
        if connection.is_open:
            connection.close()


def _fail(app: App, task: Task[Any, Any], sig: Signature, group_id: str, meta: Mapping[str, Any]) -> None:
    """Report the callback as failed (it will never run) where its result is awaited."""
    backend, callback_id = app.result_backend, sig.options.get("task_id")
    if backend is None or not callback_id:
        return
    type_name, message = describe(meta.get("result"))
    error = f"chord {group_id}: member {meta.get('task_id')} failed: {type_name}: {message}"
    payload = exception_payload(ChordError(error))
    reply_to = sig.options.get("reply_to") or task.request.reply_to
    backend.store(str(callback_id), state_message(str(callback_id), FAILURE, payload, meta.get("traceback")), reply_to)


def register(app: App) -> None:
    @app.task(name=CHORD_UNLOCK, bind=True, max_retries=None)
    def chord_unlock(self: Task[Any, Any], group_id: str, size: int, callback: dict[str, Any]) -> None:
        unlock(self, group_id, size, callback)
