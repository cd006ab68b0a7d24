"""The configuration as typed, immutable data. No I/O, no pika.

Field names are the YAML keys. The converter (:mod:`amqptasks.config.convert`) and the JSON Schema
generator (:mod:`amqptasks.config.schema`) both read these definitions, so the schema can never drift
from what the loader accepts. ``doc`` metadata becomes the schema's descriptions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

from amqptasks.config.located import Located
from amqptasks.config.tasks_model import Beat, Results, Route, TaskSettings, WorkerProfile
from amqptasks.constants import DECOMPRESSED_SIZE_FACTOR, DEFAULT_BROKER_URL, DEFAULT_MAX_MESSAGE_SIZE


class Unit:
    """Marks an int field that also accepts a string with a unit ("30s", "10MiB")."""

    def __init__(self, kind: Literal["duration_ms", "bytes"]) -> None:
        self.kind = kind


#: Milliseconds; YAML may say ``30000``, ``"30s"``, ``"5m"``, ``"1h"``, ``"7d"`` or ``"250ms"``.
Millis = Annotated[int, Unit("duration_ms")]
#: Bytes; YAML may say ``1048576``, ``"512KiB"``, ``"10MB"``, ``"1GiB"``.
Bytes = Annotated[int, Unit("bytes")]

ExchangeType = Literal["direct", "topic", "fanout", "headers"]
QueueType = Literal["classic", "quorum", "stream"]
Overflow = Literal["drop-head", "reject-publish", "reject-publish-dlx"]
HeadersMatch = Literal["all", "any", "all-with-x", "any-with-x"]


def _doc(text: str, **extra: Any) -> dict[str, Any]:
    return {"doc": text, **extra}


@dataclass(frozen=True, kw_only=True)
class TLS(Located):
    LABEL: ClassVar[str] = "tls"
    ca_file: str | None = field(default=None, metadata=_doc("CA bundle (PEM) used to verify the broker."))
    cert_file: str | None = field(default=None, metadata=_doc("Client certificate (PEM)."))
    key_file: str | None = field(default=None, metadata=_doc("Client private key (PEM).", secret=True))
    verify: bool = field(default=True, metadata=_doc("Verify the broker's certificate and host name."))
    server_hostname: str | None = field(default=None, metadata=_doc("Host name to verify, if not the URL's."))


@dataclass(frozen=True, kw_only=True)
class PublishRetry(Located):
    """How long a publish keeps trying through a broker failure (Celery's ``retry_policy``, same defaults)."""

    LABEL: ClassVar[str] = "publish_retry"
    max_retries: int | None = field(
        default=3, metadata=_doc("Retries of a publish whose connection failed; null retries forever, 0 never.")
    )
    interval_start: float = field(default=0.0, metadata=_doc("Seconds before the first retry."))
    interval_step: float = field(default=0.2, metadata=_doc("Seconds added to the wait for each further retry."))
    interval_max: float = field(default=0.2, metadata=_doc("Longest wait between two retries, in seconds."))


@dataclass(frozen=True, kw_only=True)
class Broker(Located):
    LABEL: ClassVar[str] = "broker"
    url: str = field(
        default=DEFAULT_BROKER_URL,
        metadata=_doc(
            "AMQP URL, vhost included (amqp://user:pass@host:5672/vhost); a cluster's nodes as a list, or "
            "joined with ';'. AMQPTASKS_BROKER_URL and --broker override it.",
            secret=True,
            nodes=True,
        ),
    )
    heartbeat: int = field(default=60, metadata=_doc("Heartbeat timeout in seconds (0 disables)."))
    connection_name: str | None = field(
        default=None, metadata=_doc("Name shown for our connections in the management UI.")
    )
    management_url: str | None = field(
        default=None,
        metadata=_doc("Management HTTP API URL; derived from url when omitted.", secret=True),
    )
    tls: TLS | None = field(default=None, metadata=_doc("TLS options for amqps:// URLs."))
    publish_retry: PublishRetry | None = field(
        default=None,
        metadata=_doc(
            "The retry window of every publish through a broker failure: apply_async()/delay(), publish_many(), "
            "batch(), beat and the worker's own re-publishes (a call's retry_policy= wins). "
            "Default: 3 retries after 0, 0.2 and 0.2 s, so a publish gives up about half a second (plus its "
            "connection attempts) into an outage, raising PublishConnectionError. Publishing is at-least-once: "
            "a message whose publish raised may still have been delivered."
        ),
    )
    max_message_size: Bytes = field(
        default=DEFAULT_MAX_MESSAGE_SIZE,
        metadata=_doc(
            "Largest message body, as sent (after compression): publishing a bigger one raises before anything is "
            "sent, and workers dead-letter bigger ones unread. A compressed body may inflate to "
            f"{DECOMPRESSED_SIZE_FACTOR} times this. Bytes or '4MiB'."
        ),
    )


@dataclass(frozen=True, kw_only=True)
class RoutingSpec(Located):
    """How a binding matches: routing key(s) for direct/topic, a headers match for headers exchanges."""

    routing_key: str | None = field(default=None, metadata=_doc("Binding key (topic patterns: '*', '#')."))
    routing_keys: tuple[str, ...] = field(default=(), metadata=_doc("Several binding keys at once."))
    match: HeadersMatch | None = field(default=None, metadata=_doc("Headers exchanges: x-match mode."))
    headers: Mapping[str, Any] = field(
        default_factory=dict, metadata=_doc("Headers exchanges: header values to match.")
    )
    arguments: Mapping[str, Any] = field(
        default_factory=dict, metadata=_doc("Extra binding arguments, passed as they are.")
    )

    def binding_keys(self) -> tuple[str, ...]:
        """Every binding key; one empty key when none is given (fanout, headers)."""
        if self.routing_key is not None:
            return (self.routing_key, *self.routing_keys)
        return self.routing_keys or ("",)

    def binding_arguments(self) -> dict[str, Any]:
        args: dict[str, Any] = dict(self.arguments)
        args.update(self.headers)
        if self.match is not None:
            args["x-match"] = self.match
        return args


@dataclass(frozen=True, kw_only=True)
class QueueBinding(RoutingSpec):
    LABEL: ClassVar[str] = "binding"
    exchange: str = field(metadata=_doc("Exchange the queue is bound to."))


@dataclass(frozen=True, kw_only=True)
class Binding(RoutingSpec):
    LABEL: ClassVar[str] = "binding"
    exchange: str = field(metadata=_doc("Source exchange."))
    queue: str | None = field(default=None, metadata=_doc("Destination queue."))
    to_exchange: str | None = field(default=None, metadata=_doc("Destination exchange (exchange-to-exchange)."))


@dataclass(frozen=True, kw_only=True)
class DeadLetter(Located):
    LABEL: ClassVar[str] = "dead_letter"
    exchange: str = field(metadata=_doc("Dead-letter exchange (x-dead-letter-exchange)."))
    routing_key: str | None = field(
        default=None,
        metadata=_doc("x-dead-letter-routing-key; the message keeps its own routing key when omitted."),
    )


@dataclass(frozen=True, kw_only=True)
class Exchange(Located):
    LABEL: ClassVar[str] = "exchange"
    name: str = field(metadata=_doc("Exchange name."))
    type: ExchangeType = field(default="direct", metadata=_doc("Exchange type."))
    durable: bool = field(default=True, metadata=_doc("Survives a broker restart."))
    auto_delete: bool = field(default=False, metadata=_doc("Deleted when its last binding is removed."))
    internal: bool = field(default=False, metadata=_doc("Only other exchanges may publish to it."))
    alternate_exchange: str | None = field(default=None, metadata=_doc("Receives messages this exchange cannot route."))
    arguments: Mapping[str, Any] = field(
        default_factory=dict, metadata=_doc("Extra exchange arguments, passed as they are.")
    )


@dataclass(frozen=True, kw_only=True)
class Queue(Located):
    LABEL: ClassVar[str] = "queue"
    name: str = field(metadata=_doc("Queue name."))
    type: QueueType = field(default="classic", metadata=_doc("Queue type (x-queue-type)."))
    durable: bool = field(default=True, metadata=_doc("Survives a broker restart."))
    exclusive: bool = field(default=False, metadata=_doc("Used by one connection only; deleted with it."))
    auto_delete: bool = field(default=False, metadata=_doc("Deleted when its last consumer goes."))
    max_priority: int | None = field(default=None, metadata=_doc("x-max-priority (1-255; 10 or less advised)."))
    message_ttl: Millis | None = field(default=None, metadata=_doc("x-message-ttl: ms or '30s', '5m'..."))
    expires: Millis | None = field(default=None, metadata=_doc("x-expires: delete the queue after idling."))
    max_length: int | None = field(default=None, metadata=_doc("x-max-length: at most this many messages."))
    max_length_bytes: Bytes | None = field(default=None, metadata=_doc("x-max-length-bytes: bytes or '10MiB'."))
    overflow: Overflow | None = field(default=None, metadata=_doc("x-overflow: what happens when full."))
    dead_letter: Literal["auto"] | DeadLetter | None = field(
        default=None,
        metadata=_doc(
            "Where rejected/expired messages go. 'auto' provisions the amqptasks.dlx exchange and a "
            "'<queue>.dlq' queue bound to it."
        ),
    )
    delivery_limit: int | None = field(
        default=None, metadata=_doc("Quorum queues: x-delivery-limit (dead-letter after N redeliveries).")
    )
    single_active_consumer: bool = field(
        default=False, metadata=_doc("x-single-active-consumer: one consumer at a time.")
    )
    arguments: Mapping[str, Any] = field(
        default_factory=dict, metadata=_doc("Extra queue arguments, passed as they are.")
    )
    bindings: tuple[QueueBinding, ...] = field(default=(), metadata=_doc("Bindings of this queue."))


@dataclass(frozen=True, kw_only=True)
class Topology(Located):
    LABEL: ClassVar[str] = "topology"
    exchanges: tuple[Exchange, ...] = field(default=(), metadata=_doc("Exchanges to declare."))
    queues: tuple[Queue, ...] = field(default=(), metadata=_doc("Queues to declare."))
    bindings: tuple[Binding, ...] = field(default=(), metadata=_doc("Bindings: queue or exchange destinations."))
    provision: bool = field(default=False, metadata=_doc("Declare the topology when a worker or publisher starts."))


@dataclass(frozen=True, kw_only=True)
class Delays(Located):
    """Broker-side delays: TTL tiers and dead-lettering, with no plugin, relay process or message held by a worker."""

    LABEL: ClassVar[str] = "delays"
    enabled: bool = field(
        default=False,
        metadata=_doc("Provision the broker-side delay tiers used by countdown/eta and retry backoff."),
    )


@dataclass(frozen=True, kw_only=True)
class Config(Located):
    include: tuple[str, ...] = field(
        default=(), metadata=_doc("Other YAML files merged into this one (paths relative to this file).")
    )
    broker: Broker = field(default_factory=Broker, metadata=_doc("How to reach RabbitMQ."))
    topology: Topology = field(default_factory=Topology, metadata=_doc("Exchanges, queues and bindings."))
    delays: Delays = field(
        default_factory=Delays, metadata=_doc("Delayed publishing (countdown, eta, retry backoff) on the broker.")
    )
    routes: tuple[Route, ...] = field(
        default=(), metadata=_doc("Where tasks are published, by task name, glob or regex; first match wins.")
    )
    tasks: Mapping[str, TaskSettings] = field(
        default_factory=dict,
        metadata=_doc("Task options by task name or glob ('billing.*'), overriding the code's decorators."),
    )
    workers: Mapping[str, WorkerProfile] = field(
        default_factory=dict, metadata=_doc("Named worker setups for 'amqptasks worker --profile NAME'.")
    )
    beat: Beat = field(default_factory=Beat, metadata=_doc("Periodic tasks sent by 'amqptasks beat'."))
    results: Results = field(default_factory=Results, metadata=_doc("Result backend: rpc://, redis://... or none."))
