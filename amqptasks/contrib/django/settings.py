"""``settings.AMQPTASKS`` → a validated :class:`~amqptasks.config.model.Config` (no Django import beyond settings)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from amqptasks.config.load import load_config, load_config_text
from amqptasks.config.model import Config
from amqptasks.constants import ENV_BROKER_URL, ENV_CONFIG

#: The keys ``settings.AMQPTASKS`` may hold.
KEYS = frozenset({"CONFIG", "BROKER_URL", "OVERRIDES"})


class SettingsError(ValueError):
    """``settings.AMQPTASKS`` is malformed (raised as Django's ImproperlyConfigured by the caller)."""


def config_from(setting: Any, env: Mapping[str, str] | None = None) -> Config:
    """The configuration ``settings.AMQPTASKS`` describes.

    The YAML file is ``CONFIG`` or ``$AMQPTASKS_CONFIG`` (neither: an empty configuration, i.e. the defaults);
    the broker URL is ``$AMQPTASKS_BROKER_URL``, else ``BROKER_URL``, else the YAML's; ``OVERRIDES`` (a mapping
    of YAML keys) is merged over the file, mapping by mapping.
    """
    env = os.environ if env is None else env
    if setting is None:
        setting = {}
    if not isinstance(setting, Mapping):
        raise SettingsError(f"settings.AMQPTASKS must be a dict, got {type(setting).__name__}")
    unknown = sorted(set(setting) - KEYS)
    if unknown:
        raise SettingsError(f"settings.AMQPTASKS: unknown keys {unknown} (known: {sorted(KEYS)})")
    path = setting.get("CONFIG") or env.get(ENV_CONFIG)
    broker_url = env.get(ENV_BROKER_URL) or setting.get("BROKER_URL")
    overrides = setting.get("OVERRIDES") or {}
    if not isinstance(overrides, Mapping):
        raise SettingsError("settings.AMQPTASKS['OVERRIDES'] must be a dict of YAML keys")
    if not overrides:
        if path:
            return load_config(Path(path), broker_url=broker_url)
        return load_config_text("{}", "settings.AMQPTASKS", broker_url=broker_url)
    base: Any = {}
    if path:
        try:
            base = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise SettingsError(f"settings.AMQPTASKS['CONFIG']: cannot read {path}: {exc.strerror}") from None
        if isinstance(base, Mapping) and "include" in base:
            raise SettingsError(
                f"settings.AMQPTASKS: OVERRIDES cannot be combined with {path}'s include: "
                "(put those values in the YAML, or drop OVERRIDES)"
            )
    merged = _merge(base, overrides)
    name = f"{path} with settings.AMQPTASKS['OVERRIDES']" if path else "settings.AMQPTASKS['OVERRIDES']"
    return load_config_text(yaml.safe_dump(merged, sort_keys=False), name, broker_url=broker_url)


def _merge(base: Any, overrides: Mapping[str, Any]) -> Any:
    if not isinstance(base, Mapping):
        return _plain(overrides)
    merged = dict(base)
    for key, value in overrides.items():
        merged[key] = _merge(base.get(key), value) if isinstance(value, Mapping) else _plain(value)
    return merged


def _plain(value: Any) -> Any:
    """Values YAML can dump (``Path`` objects from settings become strings)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
