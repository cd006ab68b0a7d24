"""Workflows, as in Celery's canvas: chain, group, chord, and map/starmap/chunks.

- ``chain(a.s(2, 2), b.s(4))`` or ``a.s(2, 2) | b.s(4)``: the first task carries the rest in its message's
  ``chain``; after it succeeds the worker publishes the next with the result prepended (unless immutable).
  Every task id is chosen here, so the returned result is the last task's, with ``.parent`` links back.
- ``group(sigs)``: all at once; ``GroupResult.get()`` returns the results in the group's order.
- ``chord(group, callback)`` or ``group | callback``: the callback gets the list of the members' results;
  no result store is needed (:mod:`amqptasks.results.chord`).
- Groups and chords in a chain, with Celery's meaning: each member of a group gets the previous result as its
  first argument, and a group followed by a task is a chord with that task as its callback. They travel in the
  message's ``chain`` as dicts (``subtask_type`` "group" or "chord", :func:`from_dict`); a chord takes the steps
  after it as its callback's own chain.
- ``xmap(sig, items)`` / ``xstarmap(sig, items)``: one message running the task for every item, in the worker;
  ``chunks(sig, items, n)``: a group of starmaps of *n* items each.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from amqptasks.message.ids import new_id as _new_id
from amqptasks.result import AsyncResult, GroupResult
from amqptasks.results.middleware import CHORD_UNLOCK
from amqptasks.tasks import lineage
from amqptasks.tasks.sending import destination_of
from amqptasks.tasks.signature import Signature

if TYPE_CHECKING:
    from amqptasks.app import App
    from amqptasks.results.backend import ResultBackend

MAP = "amqptasks.map"
STARMAP = "amqptasks.starmap"
#: The names a group and a chord carry as dicts (never published as tasks).
GROUP = "amqptasks.group"
CHORD = "amqptasks.chord"


def _signature(item: Any) -> Signature:
    if not isinstance(item, Signature):
        raise TypeError(f"expected a task signature (task.s(...)), got {item!r}")
    return item


def _step(item: Any) -> Step:
    if isinstance(item, Signature | group | chord):
        return item
    raise TypeError(f"expected a signature (task.s(...)), a group or a chord in a chain, got {item!r}")


def _upgraded(steps: Iterable[Step]) -> list[Step]:
    """Celery's rule: a group followed by a task is a chord whose callback is that task."""
    out: list[Step] = []
    for step in steps:
        previous = out[-1] if out else None
        if isinstance(previous, group):
            if not isinstance(step, Signature):
                raise TypeError(
                    f"chain: {previous!r} is followed by {step!r}; a group in a chain must be the last step or be "
                    "followed by a task (its chord callback): put a task between them, e.g. a tsum.s() callback"
                )
            out[-1] = chord(previous, step)
        elif isinstance(step, chord) and step.body is None:
            raise TypeError(f"chain: {step!r} has no callback; give chord(header, callback)")
        else:
            out.append(step)
    return out


class chain:  # Celery's (lowercase) name
    """Tasks run one after another, each receiving the previous one's result as its first argument."""

    def __init__(self, *tasks: Signature | chain | group | chord) -> None:
        flat: list[Step] = []
        for task in tasks:
            flat.extend(task.tasks if isinstance(task, chain) else [_step(task)])
        if not flat:
            raise ValueError("chain() needs at least one signature")
        self.tasks: tuple[Step, ...] = tuple(_upgraded(flat))

    def __or__(self, other: Any) -> chain:
        if isinstance(other, chain | Signature | group | chord):
            return chain(self, other)
        return NotImplemented

    def __repr__(self) -> str:
        return " | ".join(repr(t) for t in self.tasks)

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult | GroupResult:
        return self.apply_async(args, kwargs)

    def apply_async(
        self, args: Iterable[Any] | None = None, kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> AsyncResult | GroupResult:
        """Publish the first step (with *options*); returns the last step's result (a GroupResult for a group)."""
        first, then = self.tasks[0], _frozen_steps(self.tasks[1:])
        result: AsyncResult | GroupResult
        if isinstance(first, group):  # alone: a group followed by anything became a chord
            return first.apply_async(args, kwargs, **options)
        if isinstance(first, chord):
            result = first.frozen(then).apply_async(args, kwargs, **options)
        else:
            task_id = str(options.pop("task_id", None) or first.options.get("task_id") or _new_id())
            result = first.apply_async(tuple(args or ()), kwargs, task_id=task_id, chain=_embedded(then) or None,
                                       **options)  # fmt: skip
        backend = _app_backend(first) if then else None
        for step in then:
            result = result_of(step, backend, parent=result)
        return result


class group:  # Celery's (lowercase) name
    """Tasks run in parallel; their results come back in this order."""

    def __init__(self, *tasks: Signature | Iterable[Signature], **options: Any) -> None:
        flat: list[Signature] = []
        for task in tasks:
            flat.extend([task] if isinstance(task, Signature) else [_signature(t) for t in task])
        self.tasks: tuple[Signature, ...] = tuple(flat)
        self.options = options

    def __or__(self, other: Any) -> chord | chain:
        if isinstance(other, Signature):
            return chord(self, other)
        if isinstance(other, chain | group | chord):
            return chain(self, other)
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
        options = {**self.options, **options}
        add_to_parent = options.pop("add_to_parent", True)
        group_id = str(options.pop("group_id", None) or _new_id())
        member = {**options, "group_id": group_id, "add_to_parent": False}
        results = [
            task.apply_async(tuple(args or ()), kwargs, group_index=index, **member)
            for index, task in enumerate(self.tasks)
        ]
        return lineage.added(GroupResult(group_id, results), add_to_parent)

    def frozen(self) -> group:
        """A copy with its group id and every member's task id chosen."""
        tasks = [t.clone(task_id=t.options.get("task_id") or _new_id()) for t in self.tasks]
        return group(*tasks, **{**self.options, "group_id": self.options.get("group_id") or _new_id()})

    def as_dict(self) -> dict[str, Any]:
        return _as_dict(GROUP, "group", {"tasks": [dict(t) for t in self.tasks]}, self.options)


class chord:  # Celery's (lowercase) name
    """A group, then a callback with the list of the group's results (in the group's order)."""

    def __init__(self, header: group | Iterable[Signature], body: Signature | None = None, **options: Any) -> None:
        self.header = header if isinstance(header, group) else group(header)
        self.body = body
        self.options = options

    def __call__(self, body: Signature) -> AsyncResult:
        """Celery's ``chord(header)(callback)``: publish at once."""
        return chord(self.header, body, **self.options).apply_async()

    def __or__(self, other: Any) -> chain:
        if isinstance(other, chain | Signature | group | chord):
            return chain(self, other)
        return NotImplemented

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
        options = {**self.options, **options}
        add_to_parent = options.pop("add_to_parent", True)
        app = self.body._bound()
        callback_id = str(options.pop("task_id", None) or self.body.options.get("task_id") or _new_id())
        callback = self.body.clone(task_id=callback_id)
        backend = None if callback.options.get("ignore_result") else app.result_backend
        if not self.header.tasks:
            return callback.apply_async(([],), add_to_parent=add_to_parent)
        group_id = str(options.pop("group_id", None) or self.header.options.get("group_id") or _new_id())
        embed = {**callback, "chord_size": len(self.header)}
        declare_queue(app, group_id)
        members = self.header.apply_async(args, kwargs, group_id=group_id, chord=embed, add_to_parent=False,
                                          **options)  # fmt: skip
        app.send_task(CHORD_UNLOCK, (group_id, len(self.header), embed), **_unlock_options(app, callback, options))
        result = AsyncResult(callback_id, callback.task, app=app, backend=backend, parent=members)
        return lineage.added(result, add_to_parent)

    def frozen(self, then: Sequence[Step] = ()) -> chord:
        """A copy with every id chosen; *then* (frozen steps) run after the callback, as its chain."""
        if self.body is None:
            raise TypeError(f"{self!r} has no callback; give chord(header, callback)")
        options: dict[str, Any] = {"task_id": self.body.options.get("task_id") or _new_id()}
        if then:
            options["chain"] = _embedded(then)
        body = self.body.clone(**options)
        return chord(self.header.frozen(), body, **self.options)

    def as_dict(self) -> dict[str, Any]:
        body = dict(self.body) if self.body is not None else None
        return _as_dict(CHORD, "chord", {"header": self.header.as_dict(), "body": body}, self.options)


Step = Signature | group | chord


def _unlock_options(app: App, callback: Signature, options: Mapping[str, Any]) -> dict[str, Any]:
    # The unlock goes where the callback goes: a queue the topology has and a worker of the callback consumes
    # (never a 'default' queue that may not exist).
    declared = app.tasks[callback.task].declared if callback.task in app.tasks else None
    where = destination_of(app.task_options(callback.task, declared), callback.options, app.send_settings)
    unlock: dict[str, Any] = {"add_to_parent": False}
    if where.queue is not None and where.exchange == "":
        unlock["queue"] = where.queue
    else:
        unlock.update(exchange=where.exchange, routing_key=where.routing_key)
    # The unlock publishes the callback where its result is awaited: the unlock's own reply_to. Published from a
    # worker (a chord in a chain), that is the workflow's reply_to, or nobody when the callback ignores its result.
    unlock.update({k: options[k] for k in ("parent_id", "root_id") if options.get(k)})
    if options.get("reply_to"):
        unlock["reply_to"] = options["reply_to"]
    elif callback.options.get("ignore_result"):
        unlock["ignore_result"] = True
    return unlock


def _as_dict(name: str, kind: str, kwargs: dict[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
    return {"task": name, "args": [], "kwargs": kwargs, "options": dict(options), "subtask_type": kind,
            "immutable": False, "chord_size": None}  # fmt: skip


def signature(
    varies: str | Mapping[str, Any],
    args: Iterable[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
    *,
    immutable: bool = False,
    app: App | None = None,
    **more_options: Any,
) -> Step:
    """Celery's ``signature()``: a signature of the task named *varies* (or a copy, or one rebuilt from a dict:
    a signature, group or chord as it travels in a message). Bind it with *app* to publish it."""
    if isinstance(varies, Signature):
        return varies.clone()
    if isinstance(varies, Mapping):
        return from_dict(varies, app)
    return Signature(varies, tuple(args), kwargs, {**(options or {}), **more_options}, immutable=immutable, app=app)


def from_dict(data: Mapping[str, Any], app: App | None = None) -> Step:
    """A step of a chain as it travels in a message: a signature, or a group or chord (``subtask_type``)."""
    kind, kwargs, options = data.get("subtask_type"), data.get("kwargs") or {}, data.get("options") or {}
    if kind == "group":
        return group(*(Signature.from_dict(t, app) for t in kwargs.get("tasks") or ()), **options)
    if kind == "chord":
        header = from_dict(kwargs.get("header") or {"subtask_type": "group"}, app)
        if not isinstance(header, group):  # not silently an empty group: its callback would run with []
            raise TypeError(f"a chord's header must be a group, not {header!r}")
        body = Signature.from_dict(kwargs["body"], app) if kwargs.get("body") else None
        return chord(header, body, **options)
    return Signature.from_dict(data, app)


def freeze(step: Step) -> Step:
    """*step* with its ids chosen (a copy), so its result can be named before it is published."""
    if isinstance(step, Signature):
        return step if step.options.get("task_id") else step.clone(task_id=_new_id())
    return step.frozen()


def _frozen_steps(steps: Sequence[Step]) -> list[Step]:
    """Each step frozen; a chord takes the steps after it as its callback's chain (they are still listed)."""
    frozen: list[Step] = []
    for index, step in enumerate(steps):
        if isinstance(step, chord):
            tail = _frozen_steps(steps[index + 1 :])
            return [*frozen, step.frozen(tail), *tail]
        frozen.append(freeze(step))
    return frozen


def _embedded(frozen: Sequence[Step]) -> list[dict[str, Any]]:
    """What a message's ``chain`` carries: the steps up to the first chord (which carries the rest), the next
    one last (Celery's order: the worker pops it)."""
    out: list[dict[str, Any]] = []
    for step in frozen:
        out.append(dict(step) if isinstance(step, Signature) else step.as_dict())
        if isinstance(step, chord):
            break
    return out[::-1]


def result_of(
    step: Step, backend: ResultBackend | None, parent: AsyncResult | GroupResult | None = None
) -> AsyncResult | GroupResult:
    """The result of a frozen *step*, read from *backend* (None for a task that ignores its result)."""
    if isinstance(step, Signature):
        own = None if step.options.get("ignore_result") else backend
        return AsyncResult(str(step.options["task_id"]), step.task, app=step._app, backend=own, parent=parent)
    if isinstance(step, group):
        members = [AsyncResult(str(t.options["task_id"]), t.task, app=t._app, backend=backend) for t in step.tasks]
        return GroupResult(str(step.options["group_id"]), members, parent=parent)
    assert step.body is not None
    return result_of(step.body, backend, parent=result_of(step.header, backend, parent))


def _app_backend(first: Signature | chord) -> ResultBackend | None:
    """The result backend of the app a published chain's first step is bound to (each later step's own
    ``ignore_result`` still applies, in :func:`result_of`)."""
    signature = first.body if isinstance(first, chord) else first
    assert signature is not None  # a chord without a callback raised when it was published
    return signature._bound().result_backend


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
