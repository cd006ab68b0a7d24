"""Checks that need the whole configuration: references, RabbitMQ's capabilities, no-ops.

Pure: reads the model, writes diagnostics. What depends on the broker's version is in
``config/version_rules.py``: checked here for any version, again by plan and apply for the broker's own.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from amqptasks.broker.memory.registry import is_memory_url, memory_name
from amqptasks.broker.url import BrokerURL, query_options
from amqptasks.config import version_rules
from amqptasks.config.diagnostics import Diagnostics, did_you_mean
from amqptasks.config.located import Located
from amqptasks.config.model import Binding, Broker, Config, Exchange, Queue, RoutingSpec
from amqptasks.constants import (
    DELAY_EXIT_EXCHANGE,
    DELAY_LEVELS,
    DLX_EXCHANGE,
    MAX_PRIORITY_LIMIT,
    RABBITMQ_MAX_MESSAGE_SIZE,
    RABBITMQ_MAX_MESSAGE_SIZE_LIMIT,
    RESERVED_PREFIX,
    UNROUTABLE_EXCHANGE,
    delay_tier_name,
    dlq_name,
    is_delay_name,
)

#: Exchanges every vhost has; they may be bound from but not declared.
BUILTIN_EXCHANGES = {
    "amq.direct": "direct",
    "amq.topic": "topic",
    "amq.fanout": "fanout",
    "amq.headers": "headers",
    "amq.match": "headers",
}

#: Typed queue fields and the x-argument each one sets; giving both is ambiguous.
QUEUE_ARGUMENTS = {
    "type": "x-queue-type",
    "max_priority": "x-max-priority",
    "message_ttl": "x-message-ttl",
    "expires": "x-expires",
    "max_length": "x-max-length",
    "max_length_bytes": "x-max-length-bytes",
    "overflow": "x-overflow",
    "delivery_limit": "x-delivery-limit",
    "single_active_consumer": "x-single-active-consumer",
    "dead_letter": "x-dead-letter-exchange",
}

# What each queue type refuses on every RabbitMQ version we support (field → reason).
_UNSUPPORTED: dict[str, dict[str, str]] = {
    "quorum": {
        "exclusive": "quorum queues cannot be exclusive",
        "auto_delete": "quorum queues cannot be auto-delete",
    },
    "stream": {
        "max_priority": "streams have no message priorities",
        "exclusive": "streams cannot be exclusive",
        "auto_delete": "streams cannot be auto-delete",
        "message_ttl": "streams have no message TTL; use arguments: {x-max-age: 7D}",
        "expires": "streams cannot expire",
        "dead_letter": "streams do not dead-letter",
        "delivery_limit": "streams have no delivery limit",
        "overflow": "streams have no overflow behaviour",
        "max_length": "streams are limited by size; use max_length_bytes",
        "single_active_consumer": "single active consumer needs the stream protocol on streams",
    },
    "classic": {"delivery_limit": "delivery_limit needs a quorum queue (type: quorum)"},
}


_Named = TypeVar("_Named", Exchange, Queue)


class _Checker:
    def __init__(self, config: Config, diags: Diagnostics, ignore: dict[str, set[str]]) -> None:
        self.config = config
        self.diags = diags
        self.ignore_exchanges = ignore.get("exchange", set())
        self.ignore_queues = ignore.get("queue", set())
        topology = config.topology
        self.exchanges: dict[str, Exchange] = self._index("exchange", topology.exchanges)
        self.queues: dict[str, Queue] = self._index("queue", topology.queues)
        self.exchange_types = dict(BUILTIN_EXCHANGES)
        self.exchange_types.update({e.name: e.type for e in topology.exchanges})
        if any(q.dead_letter == "auto" for q in topology.queues):
            self.exchange_types.setdefault(DLX_EXCHANGE, "direct")
        if config.delays.enabled:
            delay_exchanges = [*map(delay_tier_name, range(DELAY_LEVELS)), DELAY_EXIT_EXCHANGE, UNROUTABLE_EXCHANGE]
            for name in delay_exchanges:
                self.exchange_types.setdefault(name, "headers")

    def _index(self, kind: str, items: Iterable[_Named]) -> dict[str, _Named]:
        into: dict[str, _Named] = {}
        for item in items:
            loc = item.where("name")
            if not item.name:
                self.diags.error(loc, f"{kind} name must not be empty")
            elif item.name.startswith(RESERVED_PREFIX):
                self.diags.error(loc, f"{kind} {item.name!r}: names starting with 'amq.' are reserved by RabbitMQ")
            if item.name in into:
                self.diags.error(loc, f"{kind} {item.name!r} is declared twice (first at {into[item.name].loc})")
            else:
                into[item.name] = item
        return into

    def run(self) -> None:
        self.broker(self.config.broker)
        for exchange in self.config.topology.exchanges:
            self.exchange(exchange)
        for queue in self.config.topology.queues:
            self.queue(queue)
            for qb in queue.bindings:
                self.binding(qb, qb.exchange, f"queue {queue.name!r}: binding")
        for binding in self.config.topology.bindings:
            self.top_binding(binding)
        if self.config.delays.enabled:
            self.delays()

    def broker(self, broker: Broker) -> None:
        if is_memory_url(broker.url):  # the in-process broker: no host, credentials, TLS or heartbeat apply
            try:
                memory_name(broker.url)
            except ValueError as exc:
                self.diags.error(broker.where("url"), f"broker: url: {exc}")
            self.message_size(broker)
            return
        try:
            url = BrokerURL.parse(broker.url)
            query_options(url)
        except ValueError as exc:
            self.diags.error(broker.where("url"), f"broker: url: {exc}")
            url = None
        if broker.heartbeat < 0:
            self.diags.error(broker.where("heartbeat"), "broker: heartbeat must be 0 (off) or a number of seconds")
        if broker.management_url is not None and not broker.management_url.startswith(("http://", "https://")):
            self.diags.error(broker.where("management_url"), "broker: management_url must start with http(s)://")
        self.message_size(broker)
        tls = broker.tls
        if tls is None:
            return
        if (tls.cert_file is None) != (tls.key_file is None):
            self.diags.error(tls.loc, "broker: tls: cert_file and key_file go together; give both or neither")
        if not tls.verify:
            self.diags.warning(tls.where("verify"), "broker: tls: certificate verification is OFF")
        if url is not None and url.scheme != "amqps":
            self.diags.warning(tls.loc, "broker: tls options are ignored for an amqp:// URL; use amqps://")

    def exchange(self, exchange: Exchange) -> None:
        what = f"exchange {exchange.name!r}"
        if exchange.alternate_exchange is not None:
            self.reference(exchange, "alternate_exchange", exchange.alternate_exchange, what)
            if "alternate-exchange" in exchange.arguments:
                self.diags.error(
                    exchange.where("arguments"),
                    f"{what}: alternate-exchange is set twice; keep alternate_exchange",
                )

    def queue(self, queue: Queue) -> None:
        what = f"queue {queue.name!r}"
        for name, reason in _UNSUPPORTED[queue.type].items():
            value = getattr(queue, name)
            if value is not None and value is not False:  # 0 is a value: `0 in (None, False)` is True
                self.diags.error(queue.where(name), f"{what}: {name}: {reason}")
        if queue.type == "quorum" and queue.overflow == "reject-publish-dlx":
            self.diags.error(
                queue.where("overflow"),
                f"{what}: overflow: quorum queues do not support 'reject-publish-dlx' (RabbitMQ accepts the "
                "declaration but does not dead-letter); use 'reject-publish' or 'drop-head'",
            )
        if queue.type in ("quorum", "stream") and not queue.durable:
            self.diags.error(queue.where("durable"), f"{what}: {queue.type} queues are always durable")
        if queue.exclusive and queue.type == "classic":
            self.diags.warning(
                queue.where("exclusive"),
                f"{what}: an exclusive queue lives only as long as the connection that declares it; "
                "provisioning it from the YAML creates a queue that disappears at once",
            )
        self.limits(queue, what)
        for field_name, argument in QUEUE_ARGUMENTS.items():
            if argument in queue.arguments:
                self.diags.error(
                    queue.where("arguments"),
                    f"{what}: arguments: {argument!r} is set by {field_name!r}; use that key",
                )
        dead_letter = queue.dead_letter
        if dead_letter == "auto":
            dlq = dlq_name(queue.name)
            if dlq in self.queues:
                self.diags.error(
                    queue.where("dead_letter"),
                    f"{what}: dead_letter: auto provisions queue {dlq!r}, which is also declared at "
                    f"{self.queues[dlq].loc}; remove one of them",
                )
        elif dead_letter is not None and dead_letter.exchange != "":
            self.reference(dead_letter, "exchange", dead_letter.exchange, f"{what}: dead_letter")

    def delays(self) -> None:
        """The delay tiers own their names, and end at the alternate exchange of each exchange."""
        owned = "the names 'amqptasks.delay.*' and 'amqptasks.unroutable' belong to the delay tiers"
        for kind, named in (("exchange", self.exchanges), ("queue", self.queues)):
            for name, item in named.items():
                if is_delay_name(name):
                    self.diags.error(item.where("name"), f"{kind} {name!r}: {owned} (delays: enabled); rename it")
        for exchange in self.exchanges.values():
            own = exchange.alternate_exchange or exchange.arguments.get("alternate-exchange")
            if own is None or own == UNROUTABLE_EXCHANGE or self._catches_everything(str(own)):
                continue
            where = exchange.where("alternate_exchange" if exchange.alternate_exchange else "arguments")
            self.diags.warning(
                where,
                f"exchange {exchange.name!r}: a delayed message it cannot route when due goes to its alternate "
                f"exchange {own!r}, not to {UNROUTABLE_EXCHANGE!r}, and is lost if {own!r} routes it nowhere; "
                f"make {own!r} a fanout exchange bound to a queue, or remove alternate_exchange",
            )

    def _catches_everything(self, exchange: str) -> bool:
        """A fanout exchange with a queue bound to it: whatever it receives ends in that queue."""
        if self.exchange_types.get(exchange) != "fanout":
            return False
        topology = self.config.topology
        bound = any(qb.exchange == exchange for q in topology.queues for qb in q.bindings)
        return bound or any(b.exchange == exchange and b.queue is not None for b in topology.bindings)

    def message_size(self, broker: Broker) -> None:
        size, where = broker.max_message_size, broker.where("max_message_size")
        if not 1 <= size <= RABBITMQ_MAX_MESSAGE_SIZE_LIMIT:
            self.diags.error(
                where,
                f"broker: max_message_size must be between 1 byte and 512MiB (RabbitMQ's own limit), not {size:,}",
            )
        elif size > RABBITMQ_MAX_MESSAGE_SIZE:
            self.diags.warning(
                where,
                f"broker: max_message_size {size:,} is over RabbitMQ's default max_message_size (128MiB): the broker "
                "closes the channel of a bigger publish unless its own max_message_size is raised as well",
            )

    def limits(self, queue: Queue, what: str) -> None:
        checks = (
            ("max_priority", 1, MAX_PRIORITY_LIMIT),
            ("message_ttl", 0, None),
            ("expires", 1, None),
            ("max_length", 0, None),
            ("max_length_bytes", 0, None),
            ("delivery_limit", 0, None),
        )
        for name, low, high in checks:
            value = getattr(queue, name)
            if value is None:
                continue
            if value < low or (high is not None and value > high):
                bound = f"between {low} and {high}" if high else f"at least {low}"
                self.diags.error(queue.where(name), f"{what}: {name} must be {bound}, got {value}")
        if queue.max_priority is not None and 10 < queue.max_priority <= MAX_PRIORITY_LIMIT:
            self.diags.warning(
                queue.where("max_priority"),
                f"{what}: max_priority {queue.max_priority}: RabbitMQ keeps a sub-queue per level; "
                "10 or less is advised",
            )

    def top_binding(self, binding: Binding) -> None:
        what = f"binding from {binding.exchange!r}"
        if (binding.queue is None) == (binding.to_exchange is None):
            self.diags.error(binding.loc, f"{what}: give exactly one destination, 'queue' or 'to_exchange'")
            return
        if binding.queue is not None:
            known = binding.queue in self.queues or binding.queue in self.ignore_queues
            if not known and not self._is_auto_dlq(binding.queue):
                hint = did_you_mean(binding.queue, [*self.queues, *self.ignore_queues])
                self.diags.error(binding.where("queue"), f"{what}: queue {binding.queue!r} is not declared{hint}")
            self.binding(binding, binding.exchange, what)
        else:
            assert binding.to_exchange is not None
            self.reference(binding, "to_exchange", binding.to_exchange, what)
            self.binding(binding, binding.exchange, what)

    def _is_auto_dlq(self, name: str) -> bool:
        return any(q.dead_letter == "auto" and dlq_name(q.name) == name for q in self.queues.values())

    def binding(self, spec: RoutingSpec, source: str, what: str) -> None:
        if source == "":
            self.diags.error(
                spec.where("exchange"),
                f"{what}: the default exchange cannot be bound; every queue is reachable through it by name",
            )
            return
        if not self.reference(spec, "exchange", source, what):
            return
        kind = self.exchange_types[source]
        has_key = spec.routing_key is not None or bool(spec.routing_keys)
        key_loc = spec.where("routing_key" if spec.routing_key is not None else "routing_keys")
        if has_key and kind in ("fanout", "headers"):
            self.diags.warning(key_loc, f"{what}: {kind} exchange {source!r} ignores routing keys; remove it")
        if kind != "headers" and (spec.match is not None or spec.headers):
            where = spec.where("match" if spec.match is not None else "headers")
            self.diags.error(where, f"{what}: match/headers only work on a headers exchange; {source!r} is {kind}")
        if kind == "headers" and spec.match is not None and not spec.headers:
            self.diags.warning(spec.where("match"), f"{what}: match without headers matches every message")
        if kind in ("direct", "topic") and not has_key:
            self.diags.warning(
                spec.loc,
                f"{what}: no routing_key on {kind} exchange {source!r}; only the empty key will match",
            )

    def reference(self, obj: Located, field_name: str, name: str, what: str) -> bool:
        if name in self.exchange_types:
            return True
        if name in self.ignore_exchanges:  # declared, but invalid: its own error was reported
            return False
        where = obj.where(field_name)
        hint = did_you_mean(name, [*self.exchange_types, *self.ignore_exchanges])
        self.diags.error(where, f"{what}: exchange {name!r} is not declared{hint}")
        return False


def check(config: Config, diags: Diagnostics, ignore: dict[str, set[str]] | None = None) -> None:
    """Record every rule *config* breaks; *ignore* names objects (by kind) that failed to convert."""
    _Checker(config, diags, ignore or {}).run()
    version_rules.check(config, diags)  # no broker here: what only some versions accept is a warning
