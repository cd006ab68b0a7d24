"""YAML configuration: files → a typed, validated, immutable model."""

from amqptasks.config.diagnostics import Diagnostic, Diagnostics, Location
from amqptasks.config.load import check_file, check_text, load_config, load_config_text
from amqptasks.config.model import (
    TLS,
    Binding,
    Broker,
    Config,
    DeadLetter,
    Exchange,
    Queue,
    QueueBinding,
    Topology,
)

__all__ = [
    "TLS",
    "Binding",
    "Broker",
    "Config",
    "DeadLetter",
    "Diagnostic",
    "Diagnostics",
    "Exchange",
    "Location",
    "Queue",
    "QueueBinding",
    "Topology",
    "check_file",
    "check_text",
    "load_config",
    "load_config_text",
]
