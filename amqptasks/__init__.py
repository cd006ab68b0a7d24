"""amqptasks: a task framework built around RabbitMQ routing."""

from amqptasks.app import App
from amqptasks.beat.schedule import crontab
from amqptasks.canvas import chain, chord, group, signature
from amqptasks.config import Config, load_config
from amqptasks.errors import AmqpTasksError, ConfigError, TopologyConflict, UnroutableError
from amqptasks.result import AsyncResult
from amqptasks.tasks.signature import Signature
from amqptasks.tasks.task import Task

__version__ = "0.1.0"

__all__ = [
    "AmqpTasksError",
    "App",
    "AsyncResult",
    "Config",
    "ConfigError",
    "Signature",
    "Task",
    "TopologyConflict",
    "UnroutableError",
    "__version__",
    "chain",
    "chord",
    "crontab",
    "group",
    "load_config",
    "signature",
]
