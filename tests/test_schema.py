"""The JSON Schema editors use to check the YAML: generated from the model, shipped with the package.

jsonschema is not a dependency, so the example files are checked with a small validator that understands exactly
the keywords the generator emits (a test below fails if the generator starts using another one). Pure: no broker.
"""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import pytest
import yaml

from amqptasks.config import (
    TLS,
    Binding,
    Broker,
    Config,
    DeadLetter,
    Exchange,
    Queue,
    QueueBinding,
    Topology,
    check_text,
    schema,
)
from amqptasks.config.model import Delays, ExchangeType, HeadersMatch, Overflow, PublishRetry, QueueType
from amqptasks.config.tasks_model import Beat, BeatEntry, BeatOptions, Results, Route, TaskSettings, WorkerProfile

REPO = Path(__file__).resolve().parent.parent
MODEL = {
    cls.__name__: cls
    for cls in (
        Config,
        Broker,
        TLS,
        PublishRetry,
        Topology,
        Exchange,
        Queue,
        DeadLetter,
        QueueBinding,
        Binding,
        Delays,
        Route,
        TaskSettings,
        WorkerProfile,
        Results,
        Beat,
        BeatEntry,
        BeatOptions,
    )
}
EXAMPLES = sorted((REPO / "config").rglob("*.yaml"))


@pytest.fixture(scope="module")
def generated() -> dict[str, Any]:
    return schema.generate()


def definition(generated: dict[str, Any], name: str) -> dict[str, Any]:
    return generated if name == "Config" else generated["$defs"][name]


def public_field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if not f.metadata.get("internal")]


# --- a validator for the subset of JSON Schema the generator emits -------------------------------------------------

#: Keywords validate() checks, and annotations it may ignore.
CHECKED = {
    "type",
    "properties",
    "additionalProperties",
    "required",
    "enum",
    "anyOf",
    "$ref",
    "items",
    "pattern",
    "minimum",
}
ANNOTATIONS = {"$schema", "$id", "title", "description", "default", "$defs"}
_TYPES: dict[str, Any] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def validate(node: dict[str, Any], value: Any, root: dict[str, Any], path: str = "$") -> list[str]:
    """Problems with *value* against schema *node* ([] when valid)."""
    if "$ref" in node:
        name = node["$ref"].removeprefix("#/$defs/")
        return validate(root["$defs"][name], value, root, path)
    if "anyOf" in node:
        results = [validate(member, value, root, path) for member in node["anyOf"]]
        if not all(results):
            return []
        # Report on the alternative of the value's shape (the list, not the single item; the mapping, not null).
        fitting = [r for member, r in zip(node["anyOf"], results, strict=True) if fits(member, value, root)]
        return fitting[0] if fitting else [f"{path}: {value!r} matches none of the alternatives"]
    if "enum" in node and value not in node["enum"]:
        return [f"{path}: {value!r} is not one of {node['enum']}"]
    if "type" in node and not _TYPES[node["type"]](value):
        return [f"{path}: expected {node['type']}, got {value!r}"]
    problems: list[str] = []
    if "pattern" in node and not re.search(node["pattern"], value):
        problems.append(f"{path}: {value!r} does not match {node['pattern']}")
    if "minimum" in node and value < node["minimum"]:
        problems.append(f"{path}: {value!r} is below {node['minimum']}")
    if isinstance(value, dict):
        properties = node.get("properties", {})
        problems += [f"{path}: missing {key!r}" for key in node.get("required", []) if key not in value]
        for key, item in value.items():
            if key in properties:
                problems += validate(properties[key], item, root, f"{path}.{key}")
            elif node.get("additionalProperties") is False:
                problems.append(f"{path}: unknown key {key!r}")
    if isinstance(value, list) and "items" in node:
        for index, item in enumerate(value):
            problems += validate(node["items"], item, root, f"{path}[{index}]")
    return problems


def fits(node: dict[str, Any], value: Any, root: dict[str, Any]) -> bool:
    """Whether *value* has the JSON type *node* is about."""
    if "$ref" in node:
        return fits(root["$defs"][node["$ref"].removeprefix("#/$defs/")], value, root)
    if "anyOf" in node:
        return any(fits(member, value, root) for member in node["anyOf"])
    if "enum" in node:
        return any(type(value) is type(option) for option in node["enum"])
    return "type" in node and _TYPES[node["type"]](value)


def schema_nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    """*node* and every schema nested in it."""
    found = [node]
    children = [*node.get("properties", {}).values(), *node.get("$defs", {}).values(), *node.get("anyOf", [])]
    if "items" in node:
        children.append(node["items"])
    for child in children:
        found += schema_nodes(child)
    return found


def test_the_validator_understands_every_keyword_the_generator_emits(generated: dict[str, Any]) -> None:
    used = {keyword for node in schema_nodes(generated) for keyword in node}

    assert used - CHECKED - ANNOTATIONS == set()


def test_the_validator_rejects_what_the_loader_rejects(generated: dict[str, Any]) -> None:
    document = {
        "topolgy": {},
        "broker": {"heartbeat": "often", "tls": {"verify": "no"}},
        "topology": {
            "exchanges": [{"name": "events", "type": "fanot"}],
            "queues": [{"type": "quorum"}, {"name": "billing", "message_ttl": "30 parsecs"}],
        },
    }

    problems = validate(generated, document, generated)

    assert [problem.split(":")[0] for problem in problems] == [
        "$",  # unknown key 'topolgy'
        "$.broker.heartbeat",
        "$.broker.tls.verify",
        "$.topology.exchanges[0].type",
        "$.topology.queues[0]",  # missing 'name'
        "$.topology.queues[1].message_ttl",
    ], problems


# --- the shipped file -----------------------------------------------------------------------------------------------


def test_the_shipped_schema_is_the_generated_one() -> None:
    # If this fails after a model change, regenerate amqptasks/config/schema.json:
    #   python -c "from amqptasks.config import schema; open('amqptasks/config/schema.json','w').write(schema.render())"
    assert schema.shipped() == schema.render()


def test_the_rendered_schema_is_json_with_an_id() -> None:
    rendered = json.loads(schema.render())

    assert rendered["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert rendered["$id"] == schema.SCHEMA_ID
    assert set(rendered["$defs"]) == set(MODEL) - {"Config"}


# --- the schema says what the model says ----------------------------------------------------------------------------


def test_every_object_refuses_unknown_keys(generated: dict[str, Any]) -> None:
    objects = [node for node in schema_nodes(generated) if node.get("type") == "object" and "properties" in node]

    assert len(objects) == len(MODEL)
    assert all(node["additionalProperties"] is False for node in objects)


@pytest.mark.parametrize("name", sorted(MODEL))
def test_properties_are_the_model_fields(generated: dict[str, Any], name: str) -> None:
    assert list(definition(generated, name)["properties"]) == public_field_names(MODEL[name])


@pytest.mark.parametrize(
    ("name", "required"),
    [
        ("Config", None),
        ("Broker", None),
        ("TLS", None),
        ("PublishRetry", None),
        ("Topology", None),
        ("Exchange", ["name"]),
        ("Queue", ["name"]),
        ("QueueBinding", ["exchange"]),
        ("Binding", ["exchange"]),
        ("DeadLetter", ["exchange"]),
    ],
)
def test_required_keys(generated: dict[str, Any], name: str, required: list[str] | None) -> None:
    assert definition(generated, name).get("required") == required


def enum_of(prop: dict[str, Any]) -> list[Any]:
    for node in schema_nodes(prop):
        if "enum" in node:
            return list(node["enum"])
    raise AssertionError(f"no enum in {prop}")


@pytest.mark.parametrize(
    ("name", "field", "literal"),
    [
        ("Exchange", "type", ExchangeType),
        ("Queue", "type", QueueType),
        ("Queue", "overflow", Overflow),
        ("QueueBinding", "match", HeadersMatch),
        ("Binding", "match", HeadersMatch),
        ("Queue", "dead_letter", typing.Literal["auto"]),
    ],
)
def test_enums_are_the_model_literals(generated: dict[str, Any], name: str, field: str, literal: Any) -> None:
    assert enum_of(definition(generated, name)["properties"][field]) == list(get_args(literal))


def test_every_literal_field_has_an_enum(generated: dict[str, Any]) -> None:
    def literals(tp: Any) -> list[Any]:
        if get_origin(tp) is typing.Literal:
            return list(get_args(tp))
        return [value for arg in get_args(tp) for value in literals(arg)]

    for name, cls in MODEL.items():
        hints = get_type_hints(cls, include_extras=True)
        for field in public_field_names(cls):
            values = literals(hints[field])
            if values:
                assert enum_of(definition(generated, name)["properties"][field]) == values, (name, field)


@pytest.mark.parametrize("name", sorted(MODEL))
def test_defaults_are_the_model_defaults(generated: dict[str, Any], name: str) -> None:
    properties = definition(generated, name)["properties"]
    for f in dataclasses.fields(MODEL[name]):
        if f.name not in properties:
            continue
        if f.default in (dataclasses.MISSING, None, ()):
            assert "default" not in properties[f.name], f.name
        else:
            assert properties[f.name]["default"] == f.default, f.name


# --- the example files ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLES, ids=[str(p.relative_to(REPO)) for p in EXAMPLES])
def test_example_files_follow_the_schema(generated: dict[str, Any], path: Path) -> None:
    document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}

    assert validate(generated, document, generated) == []


# --- the schema accepts exactly the unit strings the loader accepts -------------------------------------------------


def accepted_by_loader(field: str, value: str) -> bool:
    config, _ = check_text(f"topology:\n  queues:\n    - name: q\n      {field}: {json.dumps(value)}\n", env={})
    return config is not None


def accepted_by_schema(generated: dict[str, Any], field: str, value: str) -> bool:
    return not validate(generated["$defs"]["Queue"]["properties"][field], value, generated)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("message_ttl", "30s"),
        ("message_ttl", "250ms"),
        ("message_ttl", "1.5s"),
        ("message_ttl", " 5 m "),
        ("message_ttl", "30"),  # a duration string needs a unit
        ("message_ttl", "30 parsecs"),
        ("message_ttl", "1e3ms"),
        ("max_length_bytes", "10MiB"),
        ("max_length_bytes", "1GB"),
        ("max_length_bytes", "1Gb"),
        ("max_length_bytes", "4096"),
        ("max_length_bytes", "10 bananas"),
        ("message_ttl", "30S"),
        ("message_ttl", "250MS"),
        ("max_length_bytes", "10MIB"),
        ("max_length_bytes", "512KIB"),
    ],
)
def test_schema_and_loader_agree_on_unit_strings(generated: dict[str, Any], field: str, value: str) -> None:
    assert accepted_by_schema(generated, field, value) == accepted_by_loader(field, value)
