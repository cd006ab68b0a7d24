"""Before a workflow's first message is published: every step it may publish (chain steps, group members, chord
callbacks, links and errbacks, at any depth) must be routable by the topology, else nothing is published and
:class:`~amqptasks.errors.UnroutableStep` names the workflow and the step (see :mod:`amqptasks.topology.reach`)."""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from amqptasks.errors import UnroutableStep
from amqptasks.tasks.sending import destination_of
from amqptasks.tasks.signature import Signature
from amqptasks.topology.reach import Reach

if TYPE_CHECKING:
    from amqptasks.app import App
    from amqptasks.canvas import Step, chain

_REACH: weakref.WeakKeyDictionary[App, Reach] = weakref.WeakKeyDictionary()
#: Routing options of an apply_async call that apply to the steps it publishes first.
_ROUTING = ("exchange", "routing_key", "queue")


def check(app: App, workflow: Step | chain, call: Mapping[str, Any]) -> None:
    """Raise UnroutableStep for the first step of *workflow* (published with *call* options) that cannot be routed."""
    reach = _REACH.get(app)
    if reach is None:
        reach = _REACH[app] = Reach(app.config.topology)
    first = {k: call[k] for k in _ROUTING if call.get(k) is not None}
    for label, sig, options in _steps(workflow, "", first):
        declared = app.tasks[sig.task].declared if sig.task in app.tasks else None
        where = destination_of(app.task_options(sig.task, declared), {**sig.options, **options}, app.send_settings)
        problem = reach.problem(where)
        if problem is not None:
            raise UnroutableStep(repr(workflow), f"{label} {sig!r}".strip(), where.exchange, where.routing_key,
                                 problem)  # fmt: skip


def _steps(step: Any, label: str, call: Mapping[str, Any]) -> Iterator[tuple[str, Signature, Mapping[str, Any]]]:
    from amqptasks.canvas import chain, chord, from_dict, group

    def at(more: str) -> str:
        return f"{label}, {more}" if label else more

    if isinstance(step, chain):
        for index, inner in enumerate(step.tasks):
            yield from _steps(inner, at(f"step {index + 1}"), call if index == 0 else {})
    elif isinstance(step, group):
        for index, member in enumerate(step.tasks):
            yield from _steps(member, at(f"member {index + 1}"), call)
    elif isinstance(step, chord):
        yield from _steps(step.header, label, call)
        if step.body is not None:
            yield from _steps(step.body, at("callback"), {})
    elif isinstance(step, Signature):
        yield label or "task", step, call
        for kind in ("link", "link_error"):
            linked = step.options.get(kind)
            for data in linked if isinstance(linked, list | tuple) else [linked] if linked else []:
                yield from _steps(Signature.from_dict(data, step._app), at(kind), {})
        for data in step.options.get("chain") or ():  # a frozen step's own chain (a chord callback's)
            yield from _steps(from_dict(data, step._app), at("then"), {})
