"""Every name amqptasks puts on the broker, defined once."""

from __future__ import annotations

#: Exchange that collects dead letters of queues declared with ``dead_letter: auto``.
DLX_EXCHANGE = "amqptasks.dlx"
#: Suffix of the dead-letter queue provisioned for ``dead_letter: auto``.
DLQ_SUFFIX = ".dlq"

#: Default broker when neither the YAML, ``--broker`` nor the environment names one.
DEFAULT_BROKER_URL = "amqp://guest:guest@localhost:5672/%2F"
#: Environment variable overriding the broker URL of any configuration.
ENV_BROKER_URL = "AMQPTASKS_BROKER_URL"
#: Environment variable naming the YAML the CLI uses when none is given.
ENV_CONFIG = "AMQPTASKS_CONFIG"

#: Default ports used to derive the management API URL from an AMQP URL.
MANAGEMENT_PORT = 15672
MANAGEMENT_TLS_PORT = 15671

#: RabbitMQ rejects user-declared names with this prefix (ACCESS_REFUSED).
RESERVED_PREFIX = "amq."
#: Largest x-max-priority RabbitMQ accepts.
MAX_PRIORITY_LIMIT = 255


def dlq_name(queue: str) -> str:
    return queue + DLQ_SUFFIX
