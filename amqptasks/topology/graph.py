"""The desired topology as a picture: Mermaid or Graphviz DOT text, and SVG/PNG through Graphviz.

Exchanges are hexagons, queues cylinders. Solid edges are bindings (labelled with their routing key, or
the headers match), bold edges lead to an alternate exchange, dashed edges are where a queue
dead-letters to. Node ids are generated (``ex_…``/``q_…``), never the raw names, so any RabbitMQ name is
safe; names only appear escaped inside labels. Nodes and edges are sorted, so the same topology always
gives the same text, whatever the order of the YAML.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, overload

from amqptasks.config.rules import BUILTIN_EXCHANGES
from amqptasks.errors import AmqpTasksError
from amqptasks.topology.desired import BindingDecl, DesiredTopology, QueueDecl

__all__ = ["render", "to_dot", "to_mermaid"]

Format = Literal["mermaid", "dot", "svg", "png"]

_DOT_MISSING = "graphviz's 'dot' is not installed; install graphviz (apt install graphviz) or use --format mermaid/dot"


@dataclass(frozen=True)
class _Node:
    id: str
    kind: Literal["exchange", "queue"]
    lines: tuple[str, ...]


@dataclass(frozen=True)
class _Edge:
    source: str
    target: str
    style: Literal["binding", "alternate", "dead-letter"]
    lines: tuple[str, ...]


@dataclass(frozen=True)
class _Graph:
    nodes: tuple[_Node, ...]
    edges: tuple[_Edge, ...]


# -- the graph, independent of the output language ------------------------------------------------------------
class _Ids:
    """Readable, unique ids made only of [A-Za-z0-9_]; exchanges and queues have separate namespaces."""

    def __init__(self) -> None:
        self._ids: dict[tuple[str, str], str] = {}
        self._taken: set[str] = set()

    def get(self, kind: str, name: str) -> str:
        key = (kind, name)
        if key not in self._ids:
            prefix = "ex" if kind == "exchange" else "q"
            base = f"{prefix}_{re.sub(r'[^A-Za-z0-9]+', '_', name).strip('_') or 'default'}"
            candidate, n = base, 2
            while candidate in self._taken:
                candidate, n = f"{base}_{n}", n + 1
            self._taken.add(candidate)
            self._ids[key] = candidate
        return self._ids[key]


def _exchange_type(t: DesiredTopology, name: str) -> str | None:
    declared = t.exchange(name)
    if declared is not None:
        return declared.type
    return "direct" if name == "" else BUILTIN_EXCHANGES.get(name)


def _exchange_lines(t: DesiredTopology, name: str) -> tuple[str, ...]:
    declared = t.exchange(name)
    if name == "":
        return ("(default exchange)", "direct")
    if declared is None:
        kind = BUILTIN_EXCHANGES.get(name)
        return (name, f"{kind} (built-in)" if kind else "(not declared)")
    hints = [declared.type]
    if declared.internal:
        hints.append("internal")
    if not declared.durable:
        hints.append("transient")
    if declared.auto_delete:
        hints.append("auto-delete")
    return (name, ", ".join(hints))


def _queue_lines(q: QueueDecl | None, name: str) -> tuple[str, ...]:
    if q is None:
        return (name, "(not declared)")
    hints = [q.queue_type]
    args = q.arguments
    if "x-max-priority" in args:
        hints.append(f"priority 0-{args['x-max-priority']}")
    if "x-delivery-limit" in args:
        hints.append(f"delivery limit {args['x-delivery-limit']}")
    if "x-message-ttl" in args:
        hints.append(f"ttl {args['x-message-ttl']}ms")
    if q.exclusive:
        hints.append("exclusive")
    if not q.durable:
        hints.append("transient")
    if q.auto_delete:
        hints.append("auto-delete")
    return (name, ", ".join(hints))


def _binding_lines(t: DesiredTopology, b: BindingDecl) -> tuple[str, ...]:
    lines: list[str] = []
    if b.routing_key:
        lines.append(b.routing_key)
    elif _exchange_type(t, b.source) in ("direct", "topic"):
        lines.append('""')  # the empty key is a real key on these exchanges
    args = dict(b.arguments)
    if "x-match" in args:
        lines.append(f"x-match={args.pop('x-match')}")
    lines.extend(f"{k}={v}" for k, v in sorted(args.items(), key=lambda kv: str(kv[0])))
    return tuple(lines)


def _graph(t: DesiredTopology) -> _Graph:
    ids = _Ids()
    exchanges = {e.name for e in t.exchanges}
    queues = {q.name for q in t.queues}
    edges: list[_Edge] = []
    for b in t.bindings:
        exchanges.add(b.source)
        (queues if b.destination_type == "queue" else exchanges).add(b.destination)
    for e in t.exchanges:
        alternate = e.arguments.get("alternate-exchange")
        if alternate is not None:
            exchanges.add(str(alternate))
    for q in t.queues:
        if q.dead_letter_exchange is not None:
            exchanges.add(q.dead_letter_exchange)

    # Ids are handed out in name order so that they do not depend on the order of the YAML.
    nodes = [_Node(ids.get("exchange", n), "exchange", _exchange_lines(t, n)) for n in sorted(exchanges)]
    nodes += [_Node(ids.get("queue", n), "queue", _queue_lines(t.queue(n), n)) for n in sorted(queues)]

    for b in t.bindings:
        target = ids.get(b.destination_type, b.destination)
        edges.append(_Edge(ids.get("exchange", b.source), target, "binding", _binding_lines(t, b)))
    for e in t.exchanges:
        alternate = e.arguments.get("alternate-exchange")
        if alternate is not None:
            edges.append(
                _Edge(ids.get("exchange", e.name), ids.get("exchange", str(alternate)), "alternate", ("alternate",))
            )
    for q in t.queues:
        if q.dead_letter_exchange is not None:
            lines = ["dead-letter"]
            if "x-dead-letter-routing-key" in q.arguments:
                lines.append(f"key {q.arguments['x-dead-letter-routing-key']}")
            edges.append(
                _Edge(
                    ids.get("queue", q.name), ids.get("exchange", q.dead_letter_exchange), "dead-letter", tuple(lines)
                )
            )
    edges.sort(key=lambda edge: (edge.source, edge.target, edge.style, edge.lines))
    return _Graph(tuple(nodes), tuple(edges))


# -- Mermaid ------------------------------------------------------------------------------------------------------
_MERMAID_SPECIAL = re.compile(r'["#<>&`|\x00-\x1f\x7f]')


def _mermaid_text(lines: Iterable[str]) -> str:
    # Mermaid's own entity syntax (#35; = '#'); HTML entities would be read as text in some renderers.
    escaped = (_MERMAID_SPECIAL.sub(lambda m: f"#{ord(m.group())};", line) for line in lines)
    return '"' + "<br/>".join(escaped) + '"'


def to_mermaid(t: DesiredTopology) -> str:
    """A Mermaid ``flowchart`` of the topology, e.g. for Markdown docs."""
    graph = _graph(t)
    out = ["flowchart LR"]
    for node in graph.nodes:
        label = _mermaid_text(node.lines)
        out.append(f"    {node.id}{{{{{label}}}}}" if node.kind == "exchange" else f"    {node.id}[({label})]")
    arrows = {"binding": "-->", "alternate": "==>", "dead-letter": "-.->"}
    for edge in graph.edges:
        label = f"|{_mermaid_text(edge.lines)}|" if edge.lines else ""
        out.append(f"    {edge.source} {arrows[edge.style]}{label} {edge.target}")
    return "\n".join(out) + "\n"


# -- Graphviz -----------------------------------------------------------------------------------------------------
def _dot_text(lines: Iterable[str]) -> str:
    # In DOT strings a backslash starts an escape (\n, \l, \N...), so it is doubled before anything else.
    escaped = (line.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "") for line in lines)
    return '"' + "\\n".join(escaped) + '"'


def to_dot(t: DesiredTopology) -> str:
    """A Graphviz ``digraph`` of the topology."""
    graph = _graph(t)
    out = [
        "digraph topology {",
        "    rankdir=LR;",
        '    node [fontname="Helvetica", fontsize=11];',
        '    edge [fontname="Helvetica", fontsize=9];',
    ]
    shapes = {"exchange": "hexagon", "queue": "cylinder"}
    for node in graph.nodes:
        out.append(f"    {node.id} [shape={shapes[node.kind]}, label={_dot_text(node.lines)}];")
    styles = {"binding": [], "alternate": ["style=bold"], "dead-letter": ["style=dashed"]}
    for edge in graph.edges:
        attributes = ([f"label={_dot_text(edge.lines)}"] if edge.lines else []) + styles[edge.style]
        suffix = f" [{', '.join(attributes)}]" if attributes else ""
        out.append(f"    {edge.source} -> {edge.target}{suffix};")
    out.append("}")
    return "\n".join(out) + "\n"


@overload
def render(t: DesiredTopology, fmt: Literal["mermaid", "dot", "svg"]) -> str: ...
@overload
def render(t: DesiredTopology, fmt: Literal["png"]) -> bytes: ...
@overload
def render(t: DesiredTopology, fmt: Format) -> str | bytes: ...


def render(t: DesiredTopology, fmt: Format) -> str | bytes:
    """The topology in ``fmt``: Mermaid and DOT are text; SVG (text) and PNG (bytes) need Graphviz's ``dot``."""
    if fmt == "mermaid":
        return to_mermaid(t)
    if fmt == "dot":
        return to_dot(t)
    if fmt not in ("svg", "png"):
        raise AmqpTasksError(f"unknown graph format {fmt!r}; use mermaid, dot, svg or png")
    executable = shutil.which("dot")
    if executable is None:
        raise AmqpTasksError(_DOT_MISSING)
    try:
        done = subprocess.run(
            [executable, f"-T{fmt}"], input=to_dot(t).encode(), capture_output=True, check=False, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AmqpTasksError(f"running graphviz's 'dot' ({executable}) failed: {exc}") from None
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip() or f"exit status {done.returncode}"
        raise AmqpTasksError(f"graphviz's 'dot' could not render the topology: {detail}")
    return done.stdout.decode() if fmt == "svg" else done.stdout
