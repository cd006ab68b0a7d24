"""Public entry points: a YAML file (or text) → a validated :class:`Config`."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from amqptasks.config import rules, task_rules
from amqptasks.config.convert import Converter
from amqptasks.config.diagnostics import Diagnostics, Location
from amqptasks.config.model import Config
from amqptasks.config.nodes import Node, load_file, parse_text
from amqptasks.constants import ENV_BROKER_URL
from amqptasks.errors import ConfigError

log = logging.getLogger("amqptasks.config")


def check_file(
    path: str | Path, *, broker_url: str | None = None, env: Mapping[str, str] | None = None
) -> tuple[Config | None, Diagnostics]:
    """Load and validate *path*; never raises for problems in the file, they are in the diagnostics."""
    diags = Diagnostics()
    root = load_file(Path(path), diags, env)
    return _finish(root, diags, broker_url, env), diags


def check_text(
    text: str, name: str = "<string>", *, broker_url: str | None = None, env: Mapping[str, str] | None = None
) -> tuple[Config | None, Diagnostics]:
    diags = Diagnostics()
    root = parse_text(text, name, diags, env)
    if root is not None and not root.is_mapping:
        diags.error(root.loc, "the configuration must be a mapping")
        root = None
    if root is not None and "include" in root.value:
        where = root.value["include"].loc
        diags.error(where, "'include' only works in a file (its paths are relative to it); load the file instead")
    return _finish(root, diags, broker_url, env), diags


def load_config(path: str | Path, *, broker_url: str | None = None) -> Config:
    """Load *path*, raising :class:`ConfigError` with every problem found; warnings are logged."""
    config, diags = check_file(path, broker_url=broker_url)
    return _or_raise(config, diags)


def load_config_text(text: str, name: str = "<string>", *, broker_url: str | None = None) -> Config:
    config, diags = check_text(text, name, broker_url=broker_url)
    return _or_raise(config, diags)


def _or_raise(config: Config | None, diags: Diagnostics) -> Config:
    if diags.errors or config is None:
        raise ConfigError(list(diags.errors))
    for warning in diags.warnings:
        log.warning("%s", warning)
    return config


def _finish(
    root: Node | None, diags: Diagnostics, broker_url: str | None, env: Mapping[str, str] | None
) -> Config | None:
    if root is None:
        return None
    converter = Converter(diags)
    config = converter.object(Config, root, "")
    if config is None:
        # Still check what did convert, so that every error is reported in one run.
        config = Converter(Diagnostics()).object(Config, _prune(root, converter.failed_nodes), "")
        if config is not None:
            rules.check(config, diags, ignore=converter.failed_names)
            task_rules.check(config, diags)
        return None
    config = override_broker_url(config, broker_url, os.environ if env is None else env)
    rules.check(config, diags)
    task_rules.check(config, diags)
    return None if diags.errors else config


def _prune(node: Node, failed: set[int]) -> Node:
    """*node* without the objects that failed to convert (their errors are already recorded)."""
    if node.is_mapping:
        kept = {k: _prune(v, failed) for k, v in node.value.items() if id(v) not in failed}
        return Node(kept, node.loc, {k: node.key_locs[k] for k in kept})
    if node.is_sequence:
        return Node([_prune(item, failed) for item in node.value if id(item) not in failed], node.loc)
    return node


def override_broker_url(config: Config, flag: str | None, env: Mapping[str, str]) -> Config:
    """``--broker`` beats ``AMQPTASKS_BROKER_URL``, which beats the YAML's ``broker.url``."""
    if flag:
        url, origin = flag, "--broker"
    elif env.get(ENV_BROKER_URL):
        url, origin = env[ENV_BROKER_URL], f"${ENV_BROKER_URL}"
    else:
        return config
    broker = config.broker
    field_locs = {**broker.field_locs, "url": Location(origin, 1, 1)}
    return replace(config, broker=replace(broker, url=url, field_locs=field_locs))
