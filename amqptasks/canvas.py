"""Workflows, as in Celery's canvas: chain, group, chord, and map/starmap/chunks.

- ``chain(a.s(2, 2), b.s(4))`` or ``a.s(2, 2) | b.s(4)``: the first task carries the rest in its message's
  ``chain``; after it succeeds the worker publishes the next with the result prepended (unless immutable).
  Every task id is chosen here, so the returned result is the last task's, with ``.parent`` links back.
- ``group(sigs)``: all at once; ``GroupResult.get()`` returns the results in the group's order.
- ``chord(group, callback)`` or ``group | callback``: the callback gets the list of the members' results;
  no result store is needed (:mod:`amqptasks.results.chord`).
- ``xmap(sig, items)`` / ``xstarmap(sig, items)``: one message running the task for every item, in the worker;
  ``chunks(sig, items, n)``: a group of starmaps of *n* items each.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from amqptasks.result import AsyncResult, GroupResult
from amqptasks.results.middleware import CHORD_UNLOCK
from amqptasks.tasks.signature import Signature

if TYPE_CHECKING:
    from amqptasks.app import App

MAP = "amqptasks.map"
STARMAP = "amqptasks.starmap"


def _new_id() -> str:
    return str(uuid.uuid4())


def _signature(item: Any) -> Signature:
    if not isinstance(item, Signature):
        raise TypeError(f"expected a task signature (task.s(...)), got {item!r}")
    return item


class chain:  # Celery's (lowercase) name
    """Tasks run one after another, each receiving the previous one's result as its first argument."""

    def __init__(self, *tasks: Signature | chain) -> None:
        flat: list[Signature] = []
        for task in tasks:
            flat.extend(task.tasks if isinstance(task, chain) else [_signature(task)])
        if not flat:
            raise ValueError("chain() needs at least one signature")
        self.tasks: tuple[Signature, ...] = tuple(flat)

    def __or__(self, other: Any) -> chain:
        if isinstance(other, chain | Signature):
            return chain(self, other)
        if isinstance(other, group):
            raise TypeError("a group inside a chain is not supported; use chord(group, callback) for fan-in")
        return NotImplemented

    def __repr__(self) -> str:
        return " | ".join(repr(t) for t in self.tasks)

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        return self.apply_async(args, kwargs)

    def apply_async(
        self, args: Iterable[Any] | None = None, kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> AsyncResult:
        """Publish the first task (with *options*); returns the last task's result."""
        first, rest = self.tasks[0], self.tasks[1:]
        ids = [str(options.pop("task_id", None) or _new_id())] + [
            str(t.options.get("task_id") or _new_id()) for t in rest
        ]
        embedded = [t.clone(task_id=i) for t, i in zip(rest, ids[1:], strict=True)]
        # Celery's order: the next task is the last element (the worker pops it).
        result = first.apply_async(tuple(args or ()), kwargs, task_id=ids[0], chain=embedded[::-1] or None,
                                   **options)  # fmt: skip
        for task, task_id in zip(rest, ids[1:], strict=True):
            backend = None if task.options.get("ignore_result") else result.backend
            result = AsyncResult(task_id, task.task, app=result.app, backend=backend, parent=result)
        return result


class group:  # Celery's (lowercase) name
    """Tasks run in parallel; their results come back in this order."""

    def __init__(self, *tasks: Signature | Iterable[Signature]) -> None:
        flat: list[Signature] = []
        for task in tasks:
            flat.extend([task] if isinstance(task, Signature) else [_signature(t) for t in task])
        self.tasks: tuple[Signature, ...] = tuple(flat)

    def __or__(self, other: Any) -> chord:
        if isinstance(other, Signature):
            return chord(self, other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"group({list(self.tasks)!r})"

    def __len__(self) -> int:
        return len(self.tasks)

    def delay(self, *args: Any, **kwargs: Any) -> GroupResult:
        return self.apply_async(args, kwargs)

    def apply_async(
        self, args: Iterable[Any] | None = None, kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> GroupResult:
        """Publish every member (with partial *args* and *options* applied to each)."""
        group_id = str(options.pop("group_id", None) or _new_id())
        results = [
            task.apply_async(tuple(args or ()), kwargs, group_id=group_id, group_index=index, **options)
            for index, task in enumerate(self.tasks)
        ]
        return GroupResult(group_id, results)


class chord:  # Celery's (lowercase) name
    """A group, then a callback with the list of the group's results (in the group's order)."""

    def __init__(self, header: group | Iterable[Signature], body: Signature | None = None) -> None:
        self.header = header if isinstance(header, group) else group(header)
        self.body = body

    def __call__(self, body: Signature) -> AsyncResult:
        """Celery's ``chord(header)(callback)``: publish at once."""
        return chord(self.header, body).apply_async()

    def __repr__(self) -> str:
        return f"chord({self.header!r}, {self.body!r})"

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        return self.apply_async(args, kwargs)

    def apply_async(
        self, args: Iterable[Any] | None = None, kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> AsyncResult:
        """Publish the members and the unlock task; returns the callback's result (``.parent``: the group's)."""
        from amqptasks.results.chord import declare_queue

        if self.body is None:
            raise TypeError("chord() needs a callback: chord(header, callback) or chord(header)(callback)")
        app = self.body._bound()
        callback_id = str(options.pop("task_id", None) or self.body.options.get("task_id") or _new_id())
        callback = self.body.clone(task_id=callback_id)
        backend = None if callback.options.get("ignore_result") else app.result_backend
        if not self.header.tasks:
            return callback.apply_async(([],))
        group_id = str(options.pop("group_id", None) or _new_id())
        embed = {**callback, "chord_size": len(self.header)}
        declare_queue(app, group_id)
        members = group(*self.header.tasks).apply_async(args, kwargs, group_id=group_id, chord=embed, **options)
        app.send_task(CHORD_UNLOCK, (group_id, len(self.header), embed))
        return AsyncResult(callback_id, callback.task, app=app, backend=backend, parent=members)


def xmap(task: Signature, items: Iterable[Any]) -> Signature:
    """One task message calling *task* once per item: ``[task(item) for item in items]``."""
    return Signature(MAP, (dict(task), list(items)), app=task._bound())


def xstarmap(task: Signature, items: Iterable[Iterable[Any]]) -> Signature:
    """One task message calling *task* once per argument tuple: ``[task(*args) for args in items]``."""
    return Signature(STARMAP, (dict(task), [list(i) for i in items]), app=task._bound())


def chunks(task: Signature, items: Iterable[Iterable[Any]], n: int) -> group:
    """*items* (argument tuples) split into starmaps of *n*, run as a group."""
    if n < 1:
        raise ValueError(f"chunks of {n}: the size must be at least 1")
    listed = [list(i) for i in items]
    return group(xstarmap(task, listed[i : i + n]) for i in range(0, len(listed), n))


def register_builtin_tasks(app: App) -> None:
    """Tasks every app has: the chord unlock, map and starmap."""
    from amqptasks.results.chord import register

    register(app)

    @app.task(name=MAP)
    def xmap_task(task: dict[str, Any], items: list[Any]) -> list[Any]:
        run = app.tasks[Signature.from_dict(task, app).task]
        return [run(item) for item in items]

    @app.task(name=STARMAP)
    def xstarmap_task(task: dict[str, Any], items: list[list[Any]]) -> list[Any]:
        run = app.tasks[Signature.from_dict(task, app).task]
        return [run(*args) for args in items]
