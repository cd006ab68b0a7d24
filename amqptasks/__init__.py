"""amqptasks: a task framework built around RabbitMQ routing."""

from amqptasks.config import Config, load_config
from amqptasks.errors import AmqpTasksError, ConfigError, TopologyConflict, UnroutableError

__version__ = "0.1.0"

__all__ = [
    "AmqpTasksError",
    "Config",
    "ConfigError",
    "TopologyConflict",
    "UnroutableError",
    "__version__",
    "load_config",
]
