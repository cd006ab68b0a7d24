"""Node tree → model dataclasses, driven by the dataclasses' type hints.

Every problem (unknown key, wrong type, bad enum value, missing field) is recorded as a diagnostic
with the YAML location, and conversion goes on so that all errors are reported in one run.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, NoReturn, TypeVar, get_args, get_origin, get_type_hints

from amqptasks.config.diagnostics import Diagnostics, did_you_mean
from amqptasks.config.model import Unit
from amqptasks.config.nodes import INVALID, Node

T = TypeVar("T")

_DURATION_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_BYTES = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
_UNIT_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


class _Invalid(Exception):
    """Raised inside conversion of one value; the caller records it and moves on."""


def public_fields(cls: type) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(cls) if not f.metadata.get("internal")]


def is_required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def type_name(tp: Any) -> str:
    """A type as a user reads it in an error message."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is typing.Annotated:
        unit: Unit = args[1]
        return "duration (ms, or '30s', '5m', '1h')" if unit.kind == "duration_ms" else "size (bytes, or '10MiB')"
    if origin is typing.Literal:
        return " or ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in args if a is not type(None))
    if origin is tuple:
        item = type_name(args[0])
        plural = {"a string": "strings", "a mapping": "mappings", "an integer": "integers"}.get(item, item)
        return f"a list of {plural}"
    if origin in (dict, Mapping) or tp is Mapping:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {str: "a string", int: "an integer", bool: "true or false", float: "a number"}.get(tp, str(tp))


def _kind(node: Node) -> str:
    if node.is_mapping:
        return "a mapping"
    if node.is_sequence:
        return "a list"
    if node.value is None:
        return "null"
    if isinstance(node.value, str):
        return repr(node.value)
    return f"{type(node.value).__name__} {node.value!r}"


def label_of(cls: type, node: Node, key: str, owner: str) -> str:
    """How messages name an object: ``queue 'billing'``, ``queue 'billing': binding``, ``broker``."""
    label: str = getattr(cls, "LABEL", key)
    name = node.value.get("name") if node.is_mapping else None
    if name is not None and isinstance(name.value, str):
        return f"{label} {name.value!r}"  # named objects stand on their own
    return f"{owner}: {label}" if owner else label


class Converter:
    def __init__(self, diags: Diagnostics) -> None:
        self.diags = diags
        #: Names of objects that failed to convert, by kind ("exchange", "queue"): rules must not call
        #: references to them undeclared.
        self.failed_names: dict[str, set[str]] = {}
        #: ids of the nodes of objects that failed to convert, so that the rest can still be checked.
        self.failed_nodes: set[int] = set()

    def object(self, cls: type[T], node: Node, what: str) -> T | None:
        """Build dataclass *cls* from a mapping node; *what* names it in messages (``queue 'billing'``)."""
        if not node.is_mapping:
            self.diags.error(node.loc, f"{what}: expected a mapping, got {_kind(node)}")
            return None
        hints = get_type_hints(cls, include_extras=True)
        fields = {f.name: f for f in public_fields(cls)}
        kwargs: dict[str, Any] = {}
        ok, own_error = True, False
        for key, value_node in node.value.items():
            if key not in fields:
                hint = did_you_mean(key, fields)
                where = f"{what}: unknown key" if what else "unknown top-level key"
                self.diags.error(node.key_locs[key], f"{where} {key!r}{hint}")
                ok, own_error = False, True
                continue
            nested_failures = len(self.failed_nodes)
            try:
                if fields[key].metadata.get("nodes") and value_node.is_sequence:
                    kwargs[key] = self._nodes(value_node, key, what)
                    continue
                kwargs[key] = self.value(hints[key], value_node, key, what)
            except _Invalid:
                ok = False
                # A failed nested object was recorded already; only our own fields make *us* the culprit.
                own_error = own_error or len(self.failed_nodes) == nested_failures
        for name, f in fields.items():
            if is_required(f) and name not in node.value:
                self.diags.error(node.loc, f"{what}: missing required key {name!r}")
                ok, own_error = False, True
        if not ok:
            if own_error:
                self._record_failure(cls, node)
            return None
        if "loc" in {f.name for f in dataclasses.fields(cls)}:  # type: ignore[arg-type]
            kwargs["loc"] = node.loc
            kwargs["field_locs"] = {k: node.value[k].loc for k in node.value}
        return cls(**kwargs)

    def _record_failure(self, cls: type, node: Node) -> None:
        self.failed_nodes.add(id(node))
        name = node.value.get("name")
        if name is not None and isinstance(name.value, str):
            self.failed_names.setdefault(getattr(cls, "LABEL", ""), set()).add(name.value)

    def value(self, tp: Any, node: Node, key: str, owner: str) -> Any:
        """Convert the value of *key* in the object named *owner*."""
        origin, args = get_origin(tp), get_args(tp)
        what = f"{owner}: {key}" if owner else key
        if node.value is INVALID:
            raise _Invalid  # already reported where it was read
        if node.value is None and (origin is tuple or origin in (dict, Mapping) or tp is Mapping):
            return () if origin is tuple else {}  # "queues:" with nothing under it yet
        if origin is typing.Annotated:
            return self._unit(args[1], node, what)
        if origin in (typing.Union, types.UnionType):
            return self._union(args, node, key, owner)
        if origin is typing.Literal:
            if node.value in args and isinstance(node.value, str):
                return node.value
            hint = did_you_mean(str(node.value), [str(a) for a in args])
            return self._fail(node, f"{what} must be {type_name(tp)}, got {_kind(node)}{hint}")
        if origin is tuple:
            items = node.value if node.is_sequence else [node]  # one value stands for a list of one
            converted, ok = [], True
            for item in items:  # a bad item does not stop the others from being checked
                try:
                    converted.append(self.value(args[0], item, key, owner))
                except _Invalid:
                    ok = False
            if not ok:
                raise _Invalid
            return tuple(converted)
        if origin in (dict, Mapping) or tp is Mapping:
            if not node.is_mapping:
                return self._fail(node, f"{what} must be a mapping, got {_kind(node)}")
            if args and dataclasses.is_dataclass(args[1]):  # e.g. tasks: {"billing.*": {...}}
                return self._keyed_objects(args[1], node, key)
            return {k: plain(v) for k, v in node.value.items()}
        if dataclasses.is_dataclass(tp):
            result = self.object(tp, node, label_of(tp, node, key, owner))  # type: ignore[arg-type]
            if result is None:
                raise _Invalid
            return result
        return self._scalar(tp, node, what)

    def _nodes(self, node: Node, key: str, owner: str) -> str:
        """A list of URLs, one per node of a cluster: the ';'-joined form every URL parser here reads."""
        if not node.value:
            return self._fail(node, f"{owner}: {key}: an empty list names no broker; give at least one URL")
        items = [self.value(str, item, key, owner) for item in node.value]
        return ";".join(items)

    def _keyed_objects(self, cls: Any, node: Node, key: str) -> dict[str, Any]:
        result, ok = {}, True
        for name, child in node.value.items():
            converted = self.object(cls, child, f"{key} {name!r}")
            if converted is None:
                ok = False
            else:
                result[name] = converted
        if not ok:
            raise _Invalid
        return result

    def _union(self, args: tuple[Any, ...], node: Node, key: str, owner: str) -> Any:
        if node.value is None and type(None) in args:
            return None
        candidates = [a for a in args if a is not type(None)]
        if len(candidates) == 1:
            return self.value(candidates[0], node, key, owner)
        # Literal["auto"] | DeadLetter: pick the member that fits the node's shape.
        names = " or ".join(type_name(a) for a in candidates)
        for candidate in candidates:
            if dataclasses.is_dataclass(candidate) and node.is_mapping:
                return self.value(candidate, node, key, owner)
            if get_origin(candidate) is typing.Literal and node.value in get_args(candidate):
                return node.value
            if candidate in (bool, int, float, str) and _is_a(node.value, candidate):
                return node.value
        return self._fail(node, f"{owner}: {key} must be {names}, got {_kind(node)}")

    def _scalar(self, tp: Any, node: Node, what: str) -> Any:
        value = node.value
        if tp is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if tp is int and isinstance(value, bool):
            return self._fail(node, f"{what} must be an integer, got {value!r}")
        if isinstance(value, tp):
            return value
        return self._fail(node, f"{what} must be {type_name(tp)}, got {_kind(node)}")

    def _unit(self, unit: Unit, node: Node, what: str) -> int:
        value = node.value
        if isinstance(value, int) and not isinstance(value, bool):
            return int(value)
        table = _DURATION_MS if unit.kind == "duration_ms" else _BYTES
        match = _UNIT_RE.match(value) if isinstance(value, str) else None
        if match and match.group(2).lower() in table:
            return int(float(match.group(1)) * table[match.group(2).lower()])
        units = ", ".join(u for u in table if u)
        return self._fail(node, f"{what} must be an integer or a number with a unit ({units}), got {_kind(node)}")

    def _fail(self, node: Node, message: str) -> NoReturn:
        self.diags.error(node.loc, message)
        raise _Invalid


def _is_a(value: Any, tp: type) -> bool:
    if tp is bool or isinstance(value, bool):  # True is an int to Python, not to a YAML reader
        return tp is bool and isinstance(value, bool)
    return isinstance(value, tp) or (tp is float and isinstance(value, int))


def plain(node: Node) -> Any:
    """A node's value as plain Python data (for free-form ``arguments``)."""
    if node.is_mapping:
        return {k: plain(v) for k, v in node.value.items()}
    if node.is_sequence:
        return [plain(v) for v in node.value]
    return node.value
