"""The worker side of results and workflows: one middleware that, after each task,

- reports its state to the app's result backend (STARTED with ``track_started``, SUCCESS, FAILURE, RETRY,
  REJECTED), unless the message says ``ignore_result``; rpc:// replies go to the message's ``reply_to``;
- lists in the final state the task's children (:mod:`amqptasks.tasks.lineage`): what it published while it
  ran, and the next step of its chain and its ``link`` callbacks, whose ids are chosen before the state is stored;
- hands a chord member's state to its chord's result queue (:mod:`amqptasks.results.chord`);
- publishes the next step of a chain (a task, group or chord), the ``link`` callbacks (with the result
  prepended unless immutable) and, after a failure, the ``link_error`` errbacks.

Its errors are logged. A failed store never changes a message's fate; a publish the workflow needs that fails
(next step, chord hand-off, callback, errback) is recorded on the delivery (``handoff_error``), and the worker
then sends the message again instead of acking it (:func:`amqptasks.worker.failure.handoff_failed`).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING, Any

from amqptasks.errors import Reject
from amqptasks.message.envelope import Envelope
from amqptasks.publish import deferred
from amqptasks.results.exceptions import describe, exception_payload, format_traceback, revoked_payload
from amqptasks.results.states import (
    FAILURE,
    REJECTED,
    RETRY,
    REVOKED,
    STARTED,
    SUCCESS,
    encode,
    state_message,
)
from amqptasks.tasks import lineage
from amqptasks.tasks.signature import Signature
from amqptasks.worker import request as request_context
from amqptasks.worker.middleware import Middleware

if TYPE_CHECKING:
    from amqptasks.app import App
    from amqptasks.canvas import Step
    from amqptasks.message.protocol import TaskMessage
    from amqptasks.worker.delivery import Delivery

log = logging.getLogger("amqptasks.results")

#: The task that waits for a chord's members; its own states are of no interest to anyone.
CHORD_UNLOCK = "amqptasks.chord_unlock"


def chord_queue(group_id: str) -> str:
    return f"amqptasks.chord.{group_id}"


class Results(Middleware):
    def __init__(self, app: App) -> None:
        self.app = app

    # --- hooks -------------------------------------------------------------------------------------------

    # before_execute and after_success run for every message: they return a coroutine only when there is
    # something to store or publish, so the usual message (no backend, no workflow) costs no coroutine.

    def before_execute(self, delivery: Delivery) -> Awaitable[None] | None:
        m = delivery.message
        if m is None or self.app.result_backend is None or m.ignore_result:
            return None  # no state will be stored: no children to record, no STARTED
        lineage.begin(m.id)
        if delivery.task is not None and delivery.task.options.track_started:
            return self._store(delivery, state_message(_id(delivery), STARTED))
        return None

    def after_success(self, delivery: Delivery, result: Any) -> Awaitable[None] | None:
        m = delivery.message
        if m is None:
            return None
        if not (m.callbacks or m.chain or m.chord) and (self.app.result_backend is None or m.ignore_result):
            return None  # before_execute opened no record of children
        return self._succeeded(delivery, m, result)

    async def _succeeded(self, delivery: Delivery, m: TaskMessage, result: Any) -> None:
        steps = self._next_steps(m)
        children = lineage.take(m.id) + [_result_tuple(step) for step, _ in steps]
        meta = state_message(m.id, SUCCESS, result, children=children)
        await self._store(delivery, meta)
        await self._to_chord(delivery, m, meta)
        for step, extra in steps:
            await self._publish_step(delivery, step, (result,), m, **extra)

    async def after_failure(self, delivery: Delivery, exc: BaseException) -> None:
        m = delivery.message
        if m is None:
            return
        payload, trace = exception_payload(exc), format_traceback(exc)
        meta = state_message(m.id, FAILURE, payload, trace, children=lineage.take(m.id))
        await self._store(delivery, meta)
        await self._to_chord(delivery, m, meta)
        for errback in m.errbacks:
            await self._errback(delivery, errback, m, payload, trace)

    async def before_retry(self, delivery: Delivery, exc: BaseException | None, countdown: float) -> None:
        payload = exception_payload(exc) if exc is not None else None
        trace = format_traceback(exc) if exc is not None else None
        await self._store(delivery, state_message(_id(delivery), RETRY, payload, trace))

    async def after_reject(self, delivery: Delivery, reason: str) -> None:
        if delivery.settled == "reject" and delivery.message is not None:
            payload = exception_payload(Reject(reason))
            meta = state_message(delivery.message.id, REJECTED, payload)
            await self._store(delivery, meta)
            await self._to_chord(delivery, delivery.message, meta)  # its chord fails now, rather than wait a day

    def after_process(self, delivery: Delivery) -> None:
        lineage.take(_id(delivery))  # a run that ended otherwise (retried, rejected, ignored) closes its record

    async def after_skip(self, delivery: Delivery, state: str) -> None:
        if delivery.message is not None:
            # Stored as a Celery worker stores both: REVOKED with TaskRevokedError("revoked" | "expired"), a state
            # every client's get() ends on; the reason tells an expired task from a revoked one.
            payload = revoked_payload("revoked" if state == REVOKED else "expired")
            meta = state_message(delivery.message.id, REVOKED, payload)
            await self._store(delivery, meta)
            await self._to_chord(delivery, delivery.message, meta)  # its chord fails now, rather than wait a day

    # --- states ------------------------------------------------------------------------------------------

    async def _store(self, delivery: Delivery, meta: dict[str, Any]) -> None:
        m, backend = delivery.message, self.app.result_backend
        if m is None or backend is None or m.ignore_result or m.task == CHORD_UNLOCK:
            return
        try:
            await backend.astore(m.id, meta, m.reply_to)
        except Exception as exc:
            log.warning("%s: could not store its %s state (%r)", delivery.label, meta["status"], exc)

    async def _to_chord(self, delivery: Delivery, m: TaskMessage, meta: dict[str, Any]) -> None:
        if not m.chord or not m.group:
            return
        backend = self.app.result_backend
        if backend is not None and backend.counts_chords:
            try:
                parts = await asyncio.to_thread(backend.chord_part_return, m.id, m.group, m.group_index, meta)
            except Exception as exc:
                _handoff_failed(delivery, f"could not count its result in chord {m.group}", exc)
                return
            if parts is not None:  # counted in the store (as Celery's redis backend counts it)
                if parts:
                    await self._complete_chord(delivery, m, parts)
                return
        body = encode(meta)
        envelope = Envelope("", chord_queue(m.group), body, headers={"group_index": m.group_index or 0},
                            correlation_id=m.id)  # fmt: skip
        try:
            publisher = await self.app.aio_publisher()
            await publisher.publish(envelope)
        except Exception as exc:
            _handoff_failed(delivery, f"could not hand its result to chord {m.group}", exc)

    async def _complete_chord(self, delivery: Delivery, m: TaskMessage, parts: list[tuple[str, str, Any]]) -> None:
        """This member completed its chord: publish the callback with the members' results, or, if one of them
        did not succeed, store the callback's failure (Celery's ChordError, "Dependency <id> raised ...")."""
        from amqptasks.results.chord import ChordError
        from amqptasks.results.exceptions import rebuild

        assert m.chord is not None
        try:
            sig = Signature.from_dict(m.chord, self.app)
        except Exception as exc:
            _handoff_failed(delivery, f"could not read the callback of chord {m.group}", exc)
            return
        failed = [(task_id, result) for task_id, status, result in parts if status != SUCCESS]
        if not failed:
            await self._publish_step(delivery, sig, ([result for _, _, result in parts],), m)
            return
        task_id, payload = failed[0]
        error = ChordError(f"Dependency {task_id} raised {rebuild(payload)!r}")
        callback_id, backend = sig.options.get("task_id"), self.app.result_backend
        if callback_id and backend is not None:
            meta = state_message(str(callback_id), FAILURE, exception_payload(error), format_traceback(error))
            try:
                await backend.astore(str(callback_id), meta, sig.options.get("reply_to"))
            except Exception as exc:
                log.warning("chord %s: could not store its callback's failure (%r)", m.group, exc)
        log.error("chord %s: %s; its callback %s does not run", m.group, error, sig.task)

    # --- workflows ---------------------------------------------------------------------------------------

    def _next_steps(self, m: TaskMessage) -> list[tuple[Step, dict[str, Any]]]:
        """The ``link`` callbacks and the next step of the chain, their ids chosen, with their extra options."""
        if not m.callbacks and not m.chain:
            return []
        from amqptasks.canvas import freeze, from_dict

        wanted: list[tuple[Mapping[str, Any], dict[str, Any]]] = [(c, {}) for c in m.callbacks]
        if m.chain:
            wanted.append((m.chain[-1], {"chain": list(m.chain[:-1]) or None}))
        steps = []
        for data, extra in wanted:
            try:
                steps.append((freeze(from_dict(data, self.app)), extra))
            except Exception as exc:
                log.error("%s[%s]: could not publish %s (%r)", m.task, m.id, data.get("task"), exc)
        return steps

    async def _publish_step(
        self, delivery: Delivery, step: Step, prefix: tuple[Any, ...], parent: TaskMessage, **extra: Any
    ) -> None:
        from amqptasks.canvas import chord

        try:
            lineage_options = {"parent_id": parent.id, "root_id": parent.root_id or parent.id, **extra}
            if isinstance(step, Signature):
                sig = step.clone(prefix)
                options = {**sig.options, **lineage_options}
                options = {k: v for k, v in options.items() if v is not None or k == "chain"}
                self._route_results(options, parent)
                declared = self.app.tasks[sig.task].declared if sig.task in self.app.tasks else None
                await self.app.apublish_task(self.app.task_options(sig.task, declared), sig.args, sig.kwargs, options)
                return
            # A group is always the last step of a chain, and a chord carries the steps after it in its callback.
            options = {k: v for k, v in lineage_options.items() if v is not None and k != "chain"}
            self._route_results(options, parent)
            if isinstance(step, chord) and step.body is not None and options.get("ignore_result"):
                step = chord(step.header, step.body.clone(ignore_result=True), **step.options)
            # Groups and chords publish with the blocking publisher (a chord also declares its queue).
            await asyncio.to_thread(functools.partial(step.apply_async, prefix, None, **options))
        except Exception as exc:
            _handoff_failed(delivery, f"could not publish {step!r}", exc)

    def _route_results(self, options: dict[str, Any], parent: TaskMessage) -> None:
        backend = self.app.result_backend
        if parent.reply_to and not options.get("ignore_result"):
            options.setdefault("reply_to", parent.reply_to)  # the results go where the workflow's go
        elif backend is not None and backend.uses_reply_to:
            options["ignore_result"] = True  # nobody waits on a reply-to for it

    async def _errback(
        self, delivery: Delivery, data: Mapping[str, Any], m: TaskMessage, payload: dict[str, Any], trace: str
    ) -> None:
        """Celery 5: ``errback(request, exc, traceback)`` when the errback takes three arguments, else
        ``errback(task_id)``. The request and the exception travel as JSON data (never pickled)."""
        try:
            sig = Signature.from_dict(data, self.app)
        except Exception as error:
            log.error("%s[%s]: could not publish %s (%r)", m.task, m.id, data.get("task"), error)
            return
        request = {
            "id": m.id, "task": m.task, "args": list(m.args), "kwargs": dict(m.kwargs), "retries": m.retries,
            "root_id": m.root_id, "parent_id": m.parent_id, "group": m.group,
        }  # fmt: skip
        type_name, message = describe(payload)
        exc = {"type": type_name, "message": message, "args": payload["exc_message"]}
        full: tuple[Any, ...] = (request, exc, trace)
        if not _accepts(self.app, sig, full):
            full = (m.id,)
        await self._publish_step(delivery, sig, full, m)


def _handoff_failed(delivery: Delivery, what: str, exc: BaseException) -> None:
    """A publish the workflow needs failed: the worker will not ack the message as if all were well."""
    log.error("%s: %s (%r)", delivery.label, what, exc)
    if delivery.handoff_error is None:
        delivery.handoff_error = exc


def _accepts(app: App, sig: Signature, prefix: tuple[Any, ...]) -> bool:
    task = app.tasks.get(sig.task)
    if task is None or sig.immutable:
        return False
    try:
        inspect.signature(task.run_callable()).bind(*prefix, *sig.args, **sig.kwargs)
    except (TypeError, ValueError):
        return False
    return True


def _result_tuple(step: Step) -> list[Any]:
    from amqptasks.canvas import result_of

    return result_of(step, None).as_tuple()


def _id(delivery: Delivery) -> str:
    return delivery.message.id if delivery.message is not None else str(delivery.raw.correlation_id)


def update_state(app: App, task_id: str | None, state: str, meta: Any) -> None:
    """``Task.update_state``: a custom state (e.g. PROGRESS with its meta) of the running task, or of *task_id*."""
    request = request_context.current.get()
    backend = app.result_backend
    if backend is None:
        return
    if request is None and task_id is None:
        raise RuntimeError("update_state() outside a running task needs task_id=")
    if request is not None and request.message.ignore_result and task_id in (None, request.id):
        return
    target = task_id or (request.id if request is not None else "")
    reply_to = request.reply_to if request is not None else None
    loop = deferred.running_loop()
    if loop is not None:  # an async def task, or any coroutine: never wait for the broker on the event loop
        message = state_message(target, state, meta)
        deferred.defer(
            loop,
            lambda: backend.astore(target, message, reply_to),
            lambda: backend.store(target, message, reply_to),
            f"the {state} state of task {target}",
        )
    else:
        backend.store(target, state_message(target, state, meta), reply_to)
