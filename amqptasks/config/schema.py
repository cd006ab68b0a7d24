"""JSON Schema for the YAML, generated from the model so that editors check exactly what we accept.

Point yaml-language-server at it with a first line ``# yaml-language-server: $schema=<path>/schema.json``
(``amqptasks topology schema > amqptasks.schema.json``).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from importlib import resources
from typing import Any, get_args, get_origin, get_type_hints

from amqptasks.config.convert import is_required, public_fields
from amqptasks.config.model import Config, Unit

SCHEMA_ID = "https://amqptasks.dev/schema/config.json"
_SCALARS = {str: "string", int: "integer", bool: "boolean", float: "number"}
_UNIT_PATTERNS = {
    # The loader reads units case-insensitively; JSON Schema regexes have no flags, hence the classes.
    "duration_ms": r"^\s*\d+(\.\d+)?\s*([mM][sS]|[sS]|[mM]|[hH]|[dD])\s*$",
    "bytes": r"^\s*\d+(\.\d+)?\s*([kKmMgG][iI]?[bB]|[bB])?\s*$",
}


def _type_schema(tp: Any) -> dict[str, Any]:
    origin, args = get_origin(tp), get_args(tp)
    if origin is typing.Annotated:
        unit: Unit = args[1]
        return {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": _UNIT_PATTERNS[unit.kind]},
            ]
        }
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin in (typing.Union, types.UnionType):
        members = [_type_schema(a) for a in args if a is not type(None)]
        if type(None) in args:
            members.append({"type": "null"})
        return members[0] if len(members) == 1 else {"anyOf": members}
    if origin is tuple:
        item = _type_schema(args[0])
        return {"anyOf": [{"type": "array", "items": item}, item]}
    if origin in (dict, Mapping) or tp is Mapping:
        if args and dataclasses.is_dataclass(args[1]):
            return {"type": "object", "additionalProperties": _type_schema(args[1])}
        return {"type": "object"}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return {"$ref": f"#/$defs/{tp.__name__}"}
    return {"type": _SCALARS[tp]}


def _object_schema(cls: type, defs: dict[str, Any]) -> None:
    if cls.__name__ in defs:
        return
    defs[cls.__name__] = {}  # reserve the name before recursing
    hints = get_type_hints(cls, include_extras=True)
    properties: dict[str, Any] = {}
    for f in public_fields(cls):
        prop = _type_schema(hints[f.name])
        if f.metadata.get("nodes"):  # one URL, or a cluster's nodes as a list
            prop = {"anyOf": [prop, {"type": "array", "items": prop}]}
        if "doc" in f.metadata:
            prop = {**prop, "description": f.metadata["doc"]}
        if f.default is not dataclasses.MISSING and f.default is not None and f.default != ():
            prop["default"] = f.default
        properties[f.name] = prop
        for nested in _nested_dataclasses(hints[f.name]):
            _object_schema(nested, defs)
    schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    required = [f.name for f in public_fields(cls) if is_required(f)]
    if required:
        schema["required"] = required
    if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "("):
        schema["description"] = cls.__doc__.strip().splitlines()[0]
    defs[cls.__name__] = schema


def _nested_dataclasses(tp: Any) -> list[type]:
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return [tp]
    return [n for arg in get_args(tp) for n in _nested_dataclasses(arg)]


def generate() -> dict[str, Any]:
    defs: dict[str, Any] = {}
    _object_schema(Config, defs)
    root = defs.pop("Config")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "amqptasks configuration",
        **root,
        "$defs": defs,
    }


def render() -> str:
    return json.dumps(generate(), indent=2, sort_keys=False) + "\n"


def shipped() -> str:
    """The schema file packaged with amqptasks (kept equal to :func:`render` by a test)."""
    return resources.files("amqptasks.config").joinpath("schema.json").read_text(encoding="utf-8")
