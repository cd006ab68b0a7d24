"""The in-memory broker: one vhost's exchanges and queues, what publishing and dead-lettering do to them, and
time passing (TTLs, queue expiry). Clients use it through channels (:mod:`.channel`); this module holds the
state and the rules, under one lock (tasks publish from worker threads).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from amqptasks.broker.memory.clock import Clock, VirtualClock
from amqptasks.broker.memory.deadletter import dead_lettered, is_cycle
from amqptasks.broker.memory.errors import ACCESS_REFUSED, NOT_FOUND, PRECONDITION_FAILED, ChannelError
from amqptasks.broker.memory.exchanges import Binding, MemoryExchange, route
from amqptasks.broker.memory.message import Message, Stored, addressed, expiration_error
from amqptasks.broker.memory.queues import Dropped, MemoryQueue
from amqptasks.constants import DIRECT_REPLY_TO

__all__ = ["MemoryBroker", "Peeked", "Routed"]

#: Exchanges every vhost has (the default exchange is "").
_PREDECLARED = {
    "": "direct", "amq.direct": "direct", "amq.fanout": "fanout", "amq.topic": "topic", "amq.headers": "headers",
    "amq.match": "headers",
}  # fmt: skip


@dataclass(frozen=True)
class Routed:
    """What a publish did: the queues that stored it, and whether it was returned (mandatory) or nacked."""

    queues: tuple[str, ...]
    returned: bool = False
    nacked: bool = False


@dataclass(frozen=True)
class Peeked:
    """A message as a queue holds it, read without consuming it."""

    body: bytes
    properties: Mapping[str, Any]
    exchange: str
    routing_key: str
    redelivered: bool
    priority: int

    @property
    def headers(self) -> Mapping[str, Any]:
        return self.properties.get("headers") or {}


class MemoryBroker:
    """One vhost, in this process. *clock* defaults to a frozen :class:`VirtualClock`."""

    def __init__(self, vhost: str = "/", clock: Clock | None = None) -> None:
        self.vhost = vhost
        self.clock: Clock = clock if clock is not None else VirtualClock()
        self.lock = threading.RLock()
        self.exchanges: dict[str, MemoryExchange] = {
            name: MemoryExchange(name, kind) for name, kind in _PREDECLARED.items()
        }
        self.queues: dict[str, MemoryQueue] = {}
        #: Called with a queue's name when a message becomes ready in it (consumers wake up).
        self.on_ready: list[Callable[[str], None]] = []
        #: Stored revocations (RabbitMQ: the amqptasks.revoked stream): task id -> when (wall clock).
        self.revocations: dict[str, float] = {}
        #: Direct reply-to: address (``amq.rabbitmq.reply-to.<id>``) -> what takes (body, correlation_id).
        self.reply_sinks: dict[str, Callable[[bytes, str | None], None]] = {}

    def reset(self) -> None:
        """Back to an empty vhost (between tests): every queue, exchange, binding and revocation goes. Reply
        channels stay registered: the apps holding them keep working."""
        with self.lock:
            self.exchanges = {name: MemoryExchange(name, kind) for name, kind in _PREDECLARED.items()}
            self.queues.clear()
            self.revocations.clear()

    def now(self) -> float:
        return self.clock.time()

    def channel(self) -> Any:
        from amqptasks.broker.memory.channel import MemoryChannel

        return MemoryChannel(self)

    # --- lookups ----------------------------------------------------------------------------------------

    def exchange(self, name: str) -> MemoryExchange:
        x = self.exchanges.get(name)
        if x is None:
            raise ChannelError(NOT_FOUND, f"no exchange '{name}' in vhost '{self.vhost}'")
        return x

    def queue(self, name: str) -> MemoryQueue:
        q = self.queues.get(name)
        if q is None:
            raise ChannelError(NOT_FOUND, f"no queue '{name}' in vhost '{self.vhost}'")
        return q

    def bindings(self) -> list[Binding]:
        return [b for x in self.exchanges.values() for b in x.bindings]

    def peek(self, queue: str) -> list[Peeked]:
        """What *queue* holds, in delivery order, without consuming (expired heads are dropped first)."""
        with self.lock:
            self.tick()
            return [
                Peeked(s.message.body, dict(s.message.properties), s.message.exchange, s.message.routing_key,
                       s.redelivered, s.priority)
                for s in self.queue(queue).ready
            ]  # fmt: skip

    def snapshot(self) -> dict[str, Any]:
        """Exchanges, queues and bindings in the management API's shape (for planning against this broker)."""
        with self.lock:
            return {
                "exchanges": {n: x.description() for n, x in self.exchanges.items() if n != ""},
                "queues": {
                    n: {"name": n, "exclusive": q.exclusive, **q.description(), "messages": len(q.ready)}
                    for n, q in self.queues.items()
                },
                "bindings": [b for b in self.bindings()],
            }

    # --- publishing -------------------------------------------------------------------------------------

    def publish(self, message: Message, *, mandatory: bool = False) -> Routed:
        """Route *message* (its exchange and routing key say where) and store it in each queue reached."""
        if message.exchange == "" and message.routing_key.startswith(DIRECT_REPLY_TO + "."):
            return self._reply(message, mandatory)
        with self.lock:
            self.tick()
            x = self.exchange(message.exchange)
            if x.internal:
                raise ChannelError(
                    ACCESS_REFUSED, f"cannot publish to internal exchange '{x.name}' in vhost '{self.vhost}'"
                )
            invalid = expiration_error(message.properties.get("expiration"))
            if invalid is not None:
                raise ChannelError(PRECONDITION_FAILED, invalid)
            message = addressed(message)
            targets = self._route(message)
            if not targets:
                return Routed((), returned=mandatory)
            stored, nacked, dropped = [], False, []
            for name in targets:
                accepted, overflow = self.queues[name].store(message, self.now())
                dropped += [(name, m, r) for m, r in overflow]
                if accepted:
                    stored.append(name)
                else:
                    nacked = True
            self._dead_letter_all(dropped)
            self._ready(stored)
            return Routed(tuple(stored), nacked=nacked)

    def _reply(self, message: Message, mandatory: bool) -> Routed:
        """Direct reply-to: straight to the channel that published the request, or dropped if it is gone."""
        sink = self.reply_sinks.get(message.routing_key)
        if sink is None:
            return Routed((), returned=mandatory)
        sink(message.body, message.properties.get("correlation_id"))  # outside the lock: it may wake waiters
        return Routed((message.routing_key,))

    def _route(self, message: Message) -> list[str]:
        keys = message.routing_keys
        return route(message.exchange, keys, message.headers, self.exchanges.get, self.queues.__contains__)

    def _ready(self, queues: list[str]) -> None:
        for name in queues:
            for wake in list(self.on_ready):
                wake(name)

    # --- dead-lettering ---------------------------------------------------------------------------------

    def dead_letter(self, queue: str, message: Message, reason: str) -> None:
        with self.lock:
            self._dead_letter_all([(queue, message, reason)])

    def _dead_letter_all(self, work: list[tuple[str, Message, str]]) -> None:
        """Dead-letter each (queue, message, reason); what that drops in turn is dead-lettered after."""
        woken: list[str] = []
        while work:
            queue_name, message, reason = work.pop(0)
            q = self.queues.get(queue_name)
            dlx = q.dead_letter_exchange if q is not None else None
            if q is None or dlx is None or dlx not in self.exchanges:
                continue  # no dead-letter exchange (or a missing one): the message is dropped
            out = dead_lettered(message, queue_name, reason, self.now(), dlx, q.dead_letter_routing_key)
            targets = self._route(out)
            if reason != "rejected":
                deaths = out.headers.get("x-death") or []
                targets = [t for t in targets if not is_cycle(t, deaths)]
            for name in targets:
                accepted, overflow = self.queues[name].store(out, self.now())
                work += [(name, m, r) for m, r in overflow]
                if accepted:
                    woken.append(name)
        self._ready(woken)

    def _dead_letter_dropped(self, queue: str, dropped: Dropped) -> None:
        self._dead_letter_all([(queue, m, r) for m, r in dropped])

    # --- deliveries given back ----------------------------------------------------------------------------

    def requeue(self, queue: str, stored: Stored) -> None:
        with self.lock:
            q = self.queues.get(queue)
            if q is None:
                return  # its queue was deleted meanwhile
            dropped = q.requeue(stored, self.now())
            self._dead_letter_dropped(queue, dropped)
            self._ready([queue])

    def settle(self, queue: str, stored: Stored, dead_letter: bool) -> None:
        with self.lock:
            q = self.queues.get(queue)
            if q is None:
                return
            q.settled()
            if dead_letter:
                self._dead_letter_dropped(queue, [(stored.message, "rejected")])

    # --- time -------------------------------------------------------------------------------------------

    def tick(self) -> None:
        """Expire what is due by now: messages at the heads of queues (dead-lettered), then unused queues."""
        with self.lock:
            now = self.now()
            # Again while something expired: a dead letter may land in a queue already looked at, already due
            # (a zero TTL). Bounded: the cycle rule drops dead letters that would go round for ever.
            for _ in range(1000):
                expired = False
                unused = []
                for name, q in list(self.queues.items()):
                    if q.ready:
                        dropped = q.expire(now)
                        if dropped:
                            expired = True
                            self._dead_letter_dropped(name, dropped)
                    if q.expires_ms is not None and q.unacked == 0 and now >= q.last_used + q.expires_ms / 1000:
                        unused.append(name)
                for name in unused:
                    self.delete_queue(name)
                if not expired:
                    return

    def next_due(self) -> float | None:
        """When something next expires (a message at a queue's head, or an unused queue), in broker time."""
        with self.lock:
            times = [t for q in self.queues.values() if (t := q.next_expiry()) is not None]
            times += [q.last_used + q.expires_ms / 1000 for q in self.queues.values() if q.expires_ms is not None]
            return min(times, default=None)

    def advance(self, seconds: float) -> None:
        """Move a :class:`VirtualClock` *seconds* ahead, expiring everything due on the way, in order."""
        clock = self.clock
        if not isinstance(clock, VirtualClock):
            raise TypeError(f"advance() needs a VirtualClock, not {clock!r}")
        with self.lock:
            target = self.now() + seconds
            while (due := self.next_due()) is not None and due <= target:
                clock.set(due)
                self.tick()
            clock.set(target)
            self.tick()

    # --- topology changes (called by channels, under the lock) ------------------------------------------

    def delete_queue(self, name: str) -> int:
        q = self.queues.pop(name, None)
        for x in self.exchanges.values():
            x.bindings = [b for b in x.bindings if not (b.destination_type == "queue" and b.destination == name)]
        return 0 if q is None else len(q.ready)

    def delete_exchange(self, name: str) -> None:
        self.exchanges.pop(name, None)
        for x in self.exchanges.values():
            x.bindings = [b for b in x.bindings if not (b.destination_type == "exchange" and b.destination == name)]
