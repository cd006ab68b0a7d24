"""One exception hierarchy for everything amqptasks raises.

Transport errors (pika, aiormq, urllib) are wrapped at the boundary so users never have to catch a
transport library's exceptions.
"""

from __future__ import annotations


class AmqpTasksError(Exception):
    """Base class of every error amqptasks raises."""


class ConfigError(AmqpTasksError):
    """The YAML configuration is invalid; carries every diagnostic found."""

    def __init__(self, diagnostics: list[object]) -> None:
        self.diagnostics = diagnostics
        super().__init__("\n".join(str(d) for d in diagnostics))


class BrokerError(AmqpTasksError):
    """Talking to the broker failed."""


class ConnectionError(BrokerError):
    """The broker could not be reached or the connection was lost."""


class ManagementAPIError(BrokerError):
    """The RabbitMQ management HTTP API answered with an error or could not be reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class TopologyConflict(AmqpTasksError):
    """The live broker holds objects that differ incompatibly from the configuration."""


class UnroutableError(BrokerError):
    """A mandatory publish was returned by the broker: no queue is bound for it."""

    def __init__(self, exchange: str, routing_key: str) -> None:
        self.exchange = exchange
        self.routing_key = routing_key
        shown = exchange or "(default exchange)"
        super().__init__(
            f"message to exchange {shown!r} with routing key {routing_key!r} is unroutable: "
            "no queue is bound for it (check the bindings in your topology YAML)"
        )
