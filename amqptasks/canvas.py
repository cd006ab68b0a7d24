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
  ``chunks(sig, items, n)``: a group of starmaps of *n* items each (:mod:`amqptasks.canvas_map`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from amqptasks.canvas_map import chunks, register_builtin_tasks, xmap, xstarmap
from amqptasks.message.ids import new_id as _new_id
from amqptasks.result import AsyncResult, GroupResult
from amqptasks.results.middleware import CHORD_UNLOCK
from amqptasks.tasks import lineage
from amqptasks.tasks.sending import destination_of
from amqptasks.tasks.signature import Signature

if TYPE_CHECKING:
    from amqptasks.app import App
    from amqptasks.results.backend import ResultBackend

__all__ = ["Step", "chain", "chord", "chunks", "freeze", "from_dict", "group", "register_builtin_tasks", "result_of",
           "signature", "xmap", "xstarmap"]  # fmt: skip

#: The names a group and a chord carry as dicts (never published as tasks).
GROUP = "amqptasks.group"
CHORD = "amqptasks.chord"
CHAIN = "amqptasks.chain"


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
        """Publish the first step (with *options*); returns the last step's result (a GroupResult for a group).

        Every step is checked to be routable first (:mod:`amqptasks.canvas_routes`): if one is not, nothing is sent.
        """
        _check_routes(self, options)
        first = self.tasks[0]
        then = _replying(_frozen_steps(self.tasks[1:]), first, options)
        # A chain that is a member of a group or chord: its last step is the member (it reports to the chord).
        membership = {k: options.pop(k) for k in _MEMBERSHIP if options.get(k) is not None}
        if membership and then:
            if not isinstance(then[-1], Signature) or any(isinstance(step, chord) for step in then):
                raise TypeError(f"a chain in a group or chord must end with a task and hold no chord: {self!r}")
            then[-1] = then[-1].clone(**membership)
        elif membership:
            options.update(membership)
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

    def frozen(self) -> chain:
        """A member chain with every step's id chosen (its steps are tasks: see apply_async)."""
        return chain(*(freeze(step) for step in self.tasks))

    def as_dict(self) -> dict[str, Any]:
        """Celery's form of a chain in a message (a group member)."""
        steps = [dict(t) if isinstance(t, Signature) else t.as_dict() for t in self.tasks]
        return _as_dict(CHAIN, "chain", {"tasks": steps}, {})


class group:  # Celery's (lowercase) name
    """Tasks run in parallel; their results come back in this order."""

    def __init__(self, *tasks: Member | Iterable[Member], **options: Any) -> None:
        flat: list[Member] = []
        for task in tasks:
            flat.extend([_member(task)] if isinstance(task, Signature | chain) else [_member(t) for t in task])
        #: Signatures, or chains (ending with a task) whose last step is the member.
        self.tasks: tuple[Member, ...] = tuple(flat)
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
        """Publish every member (with partial *args* and *options* applied to each), once all are routable."""
        options = {**self.options, **options}
        _check_routes(self, options)
        add_to_parent = options.pop("add_to_parent", True)
        group_id = str(options.pop("group_id", None) or _new_id())
        member = {**options, "group_id": group_id, "add_to_parent": False}
        results = []
        for index, task in enumerate(self.tasks):
            result = task.apply_async(tuple(args or ()), kwargs, group_index=index, **member)
            assert isinstance(result, AsyncResult)  # a member chain ends with a task
            results.append(result)
        return lineage.added(GroupResult(group_id, results), add_to_parent)

    def frozen(self) -> group:
        """A copy with its group id and every member's task ids chosen."""
        tasks = [t.frozen() if isinstance(t, chain) else _with_id(t) for t in self.tasks]
        return group(*tasks, **{**self.options, "group_id": self.options.get("group_id") or _new_id()})

    def as_dict(self) -> dict[str, Any]:
        tasks = [t.as_dict() if isinstance(t, chain) else dict(t) for t in self.tasks]
        return _as_dict(GROUP, "group", {"tasks": tasks}, self.options)


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
        _check_routes(self, options)
        add_to_parent = options.pop("add_to_parent", True)
        app = self.body._bound()
        callback_id = str(options.pop("task_id", None) or self.body.options.get("task_id") or _new_id())
        callback = self.body.clone(task_id=callback_id)
        backend = None if callback.options.get("ignore_result") else app.result_backend
        if not self.header.tasks:
            return callback.apply_async(([],), add_to_parent=add_to_parent)
        group_id = str(options.pop("group_id", None) or self.header.options.get("group_id") or _new_id())
        embed = {**callback, "chord_size": len(self.header)}
        store = app.result_backend
        counted = store is not None and store.counts_chords
        if store is not None and counted:  # redis://: counted in the store as Celery counts it (Celery's workers too)
            store.set_chord_size(group_id, len(self.header))
        else:
            declare_queue(app, group_id)
        members = self.header.apply_async(args, kwargs, group_id=group_id, chord=embed, add_to_parent=False,
                                          **options)  # fmt: skip
        if not counted:
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
Member = Signature | chain
#: What makes a message a member of a group or chord.
_MEMBERSHIP = ("group_id", "group_index", "chord")


def _member(item: Any) -> Member:
    if isinstance(item, chain):
        return item.tasks[0] if len(item.tasks) == 1 and isinstance(item.tasks[0], Signature) else item
    return _signature(item)


def _check_routes(workflow: chain | group | chord, options: Mapping[str, Any]) -> None:
    from amqptasks.canvas_routes import check

    app = _any_app(workflow)
    if app is not None:
        check(app, workflow, options)


def _any_app(step: Any) -> App | None:
    if isinstance(step, Signature):
        return step._app
    members = step.tasks if isinstance(step, chain | group) else [step.header, step.body]
    return next((app for m in members if m is not None and (app := _any_app(m)) is not None), None)


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
        return group(*(_member_from_dict(t, app) for t in kwargs.get("tasks") or ()), **options)
    if kind == "chord":
        header = from_dict(kwargs.get("header") or {"subtask_type": "group"}, app)
        if not isinstance(header, group):  # not silently an empty group: its callback would run with []
            raise TypeError(f"a chord's header must be a group, not {header!r}")
        body = Signature.from_dict(kwargs["body"], app) if kwargs.get("body") else None
        return chord(header, body, **options)
    return Signature.from_dict(data, app)


def _member_from_dict(data: Mapping[str, Any], app: App | None) -> Member:
    """A group member as it travels: a signature, or a chain (``subtask_type`` "chain", Celery's form)."""
    if data.get("subtask_type") == "chain":
        steps = [from_dict(t, app) for t in (data.get("kwargs") or {}).get("tasks") or ()]
        return _member(chain(*steps))
    return Signature.from_dict(data, app)


def _with_id(sig: Signature) -> Signature:
    return sig if sig.options.get("task_id") else sig.clone(task_id=_new_id())


def freeze(step: Step) -> Step:
    """*step* with its ids chosen (a copy), so its result can be named before it is published."""
    if isinstance(step, Signature):
        return _with_id(step)
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


def _replying(frozen: list[Step], first: Step, options: Mapping[str, Any]) -> list[Step]:
    """With rpc://, each later task of the chain carries this process's reply-to address as its ``reply_to``, as
    Celery's ``freeze()`` sets it: a Celery worker publishes the next step with its own options only (ours also
    passes the message's on), so without it the results of the later steps would go elsewhere."""
    signature = first.body if isinstance(first, chord) else first
    if not frozen or not isinstance(signature, Signature) or signature._app is None or options.get("reply_to"):
        return frozen
    backend = signature._app.result_backend
    reply_address = getattr(backend, "reply_address", None) if backend is not None and backend.uses_reply_to else None
    address = reply_address() if reply_address is not None else None
    if not address:
        return frozen
    return [
        step.clone(reply_to=address)
        if isinstance(step, Signature) and not step.options.get("ignore_result") and not step.options.get("reply_to")
        else step
        for step in frozen
    ]


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
        ends = [t.tasks[-1] if isinstance(t, chain) else t for t in step.tasks]  # a member chain: its last step
        members = [AsyncResult(str(e.options["task_id"]), e.task, app=e._app, backend=backend)
                   for e in ends if isinstance(e, Signature)]  # fmt: skip
        return GroupResult(str(step.options["group_id"]), members, parent=parent)
    assert step.body is not None
    return result_of(step.body, backend, parent=result_of(step.header, backend, parent))


def _app_backend(first: Signature | chord) -> ResultBackend | None:
    """The result backend of the app a published chain's first step is bound to (each later step's own
    ``ignore_result`` still applies, in :func:`result_of`)."""
    signature = first.body if isinstance(first, chord) else first
    assert signature is not None  # a chord without a callback raised when it was published
    return signature._bound().result_backend
