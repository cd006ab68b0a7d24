"""YAML text → a tree of :class:`Node` that remembers where every value came from.

This is the only module that reads configuration files. It handles ``include:``, ``${ENV}`` /
``${ENV:-default}`` interpolation and duplicate mapping keys (which PyYAML silently collapses).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from amqptasks.config.diagnostics import Diagnostics, Location
from amqptasks.config.yaml_errors import explain


@dataclass
class Node:
    """A YAML value with its location; mappings also remember where each key was written."""

    value: Any  # dict[str, Node] | list[Node] | scalar
    loc: Location
    key_locs: dict[str, Location] = field(default_factory=dict)

    @property
    def is_mapping(self) -> bool:
        return isinstance(self.value, dict)

    @property
    def is_sequence(self) -> bool:
        return isinstance(self.value, list)


class _Invalid:
    """A value that could not be read; its error is already recorded, so nothing else reports it."""

    def __repr__(self) -> str:
        return "<invalid>"


#: Stands in for a scalar whose error (bad tag, unset variable) was already reported.
INVALID: Any = _Invalid()

_ENV_RE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_resolver = yaml.resolver.Resolver()
_MERGE_TAG = "tag:yaml.org,2002:merge"
_NULL_TAG = "tag:yaml.org,2002:null"


def display_path(path: Path) -> str:
    """A path as the user would write it: relative to the working directory when below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


class _Builder:
    def __init__(self, file: str, env: Mapping[str, str], diags: Diagnostics) -> None:
        self.file = file
        self.env = env
        self.diags = diags
        # One constructor per file: SafeConstructor remembers every object it ever built.
        self.constructor = yaml.constructor.SafeConstructor()

    def loc(self, node: yaml.Node) -> Location:
        return Location(self.file, node.start_mark.line + 1, node.start_mark.column + 1)

    def build(self, node: yaml.Node) -> Node:
        if isinstance(node, MappingNode):
            return self._mapping(node)
        if isinstance(node, SequenceNode):
            return Node([self.build(item) for item in node.value], self.loc(node))
        assert isinstance(node, ScalarNode)
        return Node(self._scalar(node), self.loc(node))

    def _mapping(self, node: MappingNode) -> Node:
        values: dict[str, Node] = {}
        key_locs: dict[str, Location] = {}
        for key_node, value_node in node.value:
            key_loc = self.loc(key_node)
            if not isinstance(key_node, ScalarNode):
                self.diags.error(key_loc, "a mapping key must be a plain string")
                continue
            if key_node.tag == _MERGE_TAG:
                self.diags.error(key_loc, "YAML merge keys ('<<') are not supported; use 'include:' instead")
                continue
            key = str(self._construct(key_node))
            if key in values:
                self.diags.error(key_loc, f"duplicate key {key!r} (first given at line {key_locs[key].line})")
                continue
            values[key] = self.build(value_node)
            key_locs[key] = key_loc
        return Node(values, self.loc(node), key_locs)

    def _scalar(self, node: ScalarNode) -> Any:
        if node.tag != "tag:yaml.org,2002:str" or "$" not in node.value:
            return self._construct(node)
        text = self._interpolate(node.value, self.loc(node))
        if text is INVALID:
            return INVALID
        if node.style is None:  # plain scalars get their type after substitution: ${PORT:-5672} is an int
            tag = _resolver.resolve(ScalarNode, text, (True, False))  # type: ignore[no-untyped-call]
            return self._construct(ScalarNode(tag, text, node.start_mark, node.end_mark))
        return text

    def _construct(self, node: ScalarNode) -> Any:
        """A scalar's Python value; unknown tags and impossible values (``2024-13-45``) become errors."""
        try:
            return self.constructor.construct_object(node)
        except (yaml.YAMLError, ValueError, TypeError) as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            self.diags.error(self.loc(node), f"cannot read value {node.value!r}: {problem}")
            return INVALID

    def _interpolate(self, text: str, loc: Location) -> Any:
        """``${VAR}`` and ``${VAR:-default}`` as in POSIX shells (an empty variable takes the default)."""
        missing: list[str] = []

        def substitute(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            name, default = match.group(1), match.group(2)
            value = self.env.get(name)
            if default is not None and not value:
                return default
            if value is None:
                missing.append(name)
                return ""
            return value

        result = _ENV_RE.sub(substitute, text)
        for name in missing:
            self.diags.error(loc, f"environment variable {name!r} is not set (set it, or write ${{{name}:-default}})")
        return INVALID if missing else result


def parse_text(text: str, file: str, diags: Diagnostics, env: Mapping[str, str] | None = None) -> Node | None:
    """Parse one YAML document; syntax errors become diagnostics."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark, problem = explain(exc)
        loc = Location(file, mark.line + 1, mark.column + 1) if mark else Location(file, 1, 1)
        diags.error(loc, f"YAML syntax error: {problem}")
        return None
    except yaml.YAMLError as exc:  # composer errors without a mark
        diags.error(Location(file, 1, 1), f"YAML error: {exc}")
        return None
    if root is None or (isinstance(root, ScalarNode) and root.tag == _NULL_TAG):  # empty, or just "---"
        return Node({}, Location(file, 1, 1))
    return _Builder(file, os.environ if env is None else env, diags).build(root)


def load_file(path: Path, diags: Diagnostics, env: Mapping[str, str] | None = None) -> Node | None:
    """Read *path* and every file it includes, merged into one tree."""
    return _Includes(diags, env).load(path.resolve(), display_path(path), ())


class _Includes:
    """Follows ``include:``; a file reached twice (a diamond of includes) is merged once."""

    def __init__(self, diags: Diagnostics, env: Mapping[str, str] | None) -> None:
        self.diags = diags
        self.env = env
        self.merged: set[Path] = set()

    def load(self, path: Path, file: str, stack: tuple[Path, ...]) -> Node | None:
        self.merged.add(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            self.diags.error(Location(file, 1, 1), "file not found")
            return None
        except (OSError, UnicodeDecodeError) as exc:
            self.diags.error(Location(file, 1, 1), f"cannot read file: {exc}")
            return None
        root = parse_text(text, file, self.diags, self.env)
        if root is None:
            return None
        if not root.is_mapping:
            self.diags.error(root.loc, "the configuration must be a mapping (exchanges, queues... under 'topology:')")
            return None
        include = root.value.get("include")
        if include is not None:
            self._include(root, include, path, file, (*stack, path))
        return root

    def _include(self, root: Node, include: Node, path: Path, file: str, stack: tuple[Path, ...]) -> None:
        items = [include] if isinstance(include.value, str) else include.value
        if not isinstance(items, list):
            self.diags.error(include.loc, "'include' must be a file name or a list of file names")
            return
        for item in items:
            if not isinstance(item.value, str):
                self.diags.error(item.loc, "'include' entries must be file names (strings)")
                continue
            target = (path.parent / item.value).resolve()
            if target in stack:
                self.diags.error(item.loc, f"include cycle: {item.value!r} includes itself again")
            elif not target.exists():
                self.diags.error(item.loc, f"included file {item.value!r} not found (paths are relative to {file})")
            elif target not in self.merged:
                child = self.load(target, display_path(target), stack)
                if child is not None:
                    merge(root, child, self.diags)


def merge(into: Node, other: Node, diags: Diagnostics) -> None:
    """Merge an included file: lists concatenate, sections defined twice are an error."""
    for key, node in other.value.items():
        if key == "include":
            continue
        if key not in into.value:
            into.value[key] = node
            into.key_locs[key] = other.key_locs[key]
        elif into.value[key].is_sequence and node.is_sequence:
            into.value[key].value.extend(node.value)
        elif into.value[key].is_mapping and node.is_mapping:
            merge(into.value[key], node, diags)
        else:
            first = into.key_locs[key]
            diags.error(other.key_locs[key], f"{key!r} is already set at {first}; set it in one file only")
