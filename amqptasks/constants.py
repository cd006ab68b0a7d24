"""Every name amqptasks puts on the broker, defined once."""

from __future__ import annotations

#: Exchange that collects dead letters of queues declared with ``dead_letter: auto``.
DLX_EXCHANGE = "amqptasks.dlx"
#: Suffix of the dead-letter queue provisioned for ``dead_letter: auto``.
DLQ_SUFFIX = ".dlq"

#: Broker-side delays (``delays: {enabled: true}``). Level L of the tiers is an exchange and a queue both
#: named ``amqptasks.delay.L``; a message leaves the last level through the exit exchange.
DELAY_TIER_PREFIX = "amqptasks.delay."
#: Number of levels; level L holds a message for 2**L ms, so delays up to 2**32 - 1 ms (~49.7 days).
DELAY_LEVELS = 32
DELAY_EXIT_EXCHANGE = "amqptasks.delay.exit"
#: Alternate exchange (and its queue) that keeps delayed messages nothing could route when they fell due.
UNROUTABLE_EXCHANGE = "amqptasks.unroutable"
#: Headers of a delayed message. No "x-" prefix: headers exchanges do not match on x- headers.
DELAY_BIT_HEADER_PREFIX = "amqptasks.d"
DELAY_TARGET_HEADER = "amqptasks.target"
DELAYED_HEADER = "amqptasks.delayed"

#: Default broker when neither the YAML, ``--broker`` nor the environment names one.
DEFAULT_BROKER_URL = "amqp://guest:guest@localhost:5672/%2F"
#: Environment variable overriding the broker URL of any configuration.
ENV_BROKER_URL = "AMQPTASKS_BROKER_URL"
#: Environment variable naming the YAML the CLI uses when none is given.
ENV_CONFIG = "AMQPTASKS_CONFIG"
#: "asyncio" makes the worker run on asyncio's own event loop even when uvloop is installed.
ENV_EVENT_LOOP = "AMQPTASKS_EVENT_LOOP"

#: Default ports used to derive the management API URL from an AMQP URL.
MANAGEMENT_PORT = 15672
MANAGEMENT_TLS_PORT = 15671

#: RabbitMQ rejects user-declared names with this prefix (ACCESS_REFUSED).
RESERVED_PREFIX = "amq."
#: A redelivered message on a classic queue counts its redeliveries in this header (quorum queues count
#: with x-delivery-count and enforce x-delivery-limit themselves).
REDELIVERIES_HEADER = "x-amqptasks-redeliveries"
#: A task whose workflow hand-off (next step, chord, callback, errback) could not be published is sent again
#: later; this header counts those attempts (for the back-off).
HANDOFFS_HEADER = "x-amqptasks-handoffs"
#: Largest x-max-priority RabbitMQ accepts.
MAX_PRIORITY_LIMIT = 255

#: Default ``broker.max_message_size``: the largest body (as sent, after compression) published or accepted.
DEFAULT_MAX_MESSAGE_SIZE = 4 * 1024 * 1024
#: RabbitMQ's own default ``max_message_size`` (3.8+), and the most it can be set to.
RABBITMQ_MAX_MESSAGE_SIZE = 128 * 1024 * 1024
RABBITMQ_MAX_MESSAGE_SIZE_LIMIT = 512 * 1024 * 1024
#: A compressed body may inflate to this many times ``max_message_size``; beyond, a worker refuses it as a
#: decompression bomb (zlib can inflate a few KiB to GiBs).
DECOMPRESSED_SIZE_FACTOR = 16


def dlq_name(queue: str) -> str:
    return queue + DLQ_SUFFIX


def delay_tier_name(level: int) -> str:
    return f"{DELAY_TIER_PREFIX}{level}"


def delay_bit_header(level: int) -> str:
    return f"{DELAY_BIT_HEADER_PREFIX}{level}"


def is_delay_name(name: str) -> bool:
    """Names the delays own (exchanges and queues alike) when they are enabled."""
    return name.startswith(DELAY_TIER_PREFIX) or name == UNROUTABLE_EXCHANGE


#: Stream of failure records (one JSON document per failed or dead-lettered task), kept for a week: what
#: ``amqptasks dlq list`` joins to the dead letters by task id. Declared lazily by workers with these arguments.
FAILURES_QUEUE = "amqptasks.failures"
# A bounded classic queue, read without consuming (get, then close the channel). Not a stream: on RabbitMQ 3.10 a
# publish right after a stream is declared can crash the channel (osiris_writer:write(none, ...)) and the broker
# then closes the whole connection with 541 INTERNAL_ERROR -- the worker's publishing connection.
FAILURES_QUEUE_ARGUMENTS = {"x-max-length": 100_000, "x-overflow": "drop-head"}

#: Events (``amqptasks worker --events``): Celery's topic exchange, routing key the event type with dots
#: (``task.succeeded``, ``worker.heartbeat``), so ``celery events`` and Flower read them. Durable, as Celery declares
#: it; the events themselves are transient. Remote control uses Celery's pidbox exchanges (control/pidbox.py).
EVENTS_EXCHANGE = "celeryev"
#: RabbitMQ's direct reply-to pseudo-queue: replies need no queue of their own.
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
#: Stored revocations (``amqptasks control revoke``): a stream each revoke appends ``{"task_id", "time"}`` to and
#: every worker reads from its first record at start, so a worker started after a revoke still knows it.
#: Records older than the worker's revoked-ids TTL (3 h) are skipped; x-max-age lets the broker drop them
#: (whole segments only, hence the small segment size). Never pruned by ``topology apply --prune``.
REVOKED_STREAM = "amqptasks.revoked"
REVOKED_STREAM_ARGUMENTS = {"x-queue-type": "stream", "x-max-age": "3h", "x-stream-max-segment-size-bytes": 8_000_000}
