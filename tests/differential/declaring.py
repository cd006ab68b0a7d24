"""Declarations: equivalence errors, reserved names, what a queue type refuses, missing objects."""

from __future__ import annotations

from typing import Any

from tests.differential.driver import Driver
from tests.differential.table import scenario


@scenario
def redeclaring_a_queue_with_another_ttl_is_refused(d: Driver) -> Any:
    d.queue("q", arguments={"x-message-ttl": 1000})
    return (
        d.attempt(lambda: d.queue("q", arguments={"x-message-ttl": 2000})),
        d.attempt(lambda: d.queue("q", arguments={"x-message-ttl": 1000})),
    )


@scenario
def redeclaring_a_queue_with_other_properties_is_refused(d: Driver) -> Any:
    d.queue("q", durable=True)
    return (d.attempt(lambda: d.queue("q", durable=False)), d.attempt(lambda: d.queue("q", auto_delete=True)))


@scenario
def redeclaring_without_an_argument_or_with_a_new_one_is_refused(d: Driver) -> Any:
    d.queue("q", arguments={"x-dead-letter-exchange": "dlx"})
    d.queue("r")
    return (d.attempt(lambda: d.queue("q")), d.attempt(lambda: d.queue("r", arguments={"x-max-length": 5})))


@scenario
def redeclaring_with_the_value_in_another_type_is_refused(d: Driver) -> Any:
    d.queue("q", arguments={"x-message-ttl": 1000, "x-max-priority": 3})
    return (
        d.attempt(lambda: d.queue("q", arguments={"x-message-ttl": "1000", "x-max-priority": 3})),
        d.attempt(lambda: d.queue("q", arguments={"x-message-ttl": 1000, "x-max-priority": 4})),
    )


@scenario
def arguments_rabbitmq_does_not_compare_are_accepted(d: Driver) -> Any:
    d.queue("q", arguments={"x-custom": 1})
    return d.attempt(lambda: d.queue("q", arguments={"x-custom": 2}))


@scenario
def explicit_classic_queue_type_against_an_implicit_one(d: Driver) -> Any:
    d.queue("implicit")
    d.queue("explicit", arguments={"x-queue-type": "classic"})
    return (
        d.attempt(lambda: d.queue("implicit", arguments={"x-queue-type": "classic"})),
        d.attempt(lambda: d.queue("explicit")),
    )


@scenario
def redeclaring_an_exchange_differently_is_refused(d: Driver) -> Any:
    d.exchange("x", "direct")
    d.exchange("y", "topic", arguments={"alternate-exchange": "ae"})
    return (
        d.attempt(lambda: d.exchange("x", "fanout")),
        d.attempt(lambda: d.exchange("x", "direct", durable=False)),
        d.attempt(lambda: d.exchange("x", "direct", arguments={"alternate-exchange": "ae"})),
        d.attempt(lambda: d.exchange("y", "topic", arguments={"alternate-exchange": "other"})),
        d.attempt(lambda: d.exchange("x", "direct", internal=True)),
        d.attempt(lambda: d.exchange("x", "direct")),
    )


@scenario
def reserved_names_are_refused(d: Driver) -> Any:
    return (
        d.attempt(lambda: d.queue("amq.mine")),
        d.attempt(lambda: d.exchange("amq.mine", "direct")),
        d.attempt(lambda: d.exchange("amq.direct", "direct")),
    )


@scenario
def quorum_queues_refuse_what_they_cannot_do(d: Driver) -> Any:
    return (
        d.attempt(lambda: d.queue("q1", durable=False, arguments={"x-queue-type": "quorum"})),
        d.attempt(lambda: d.queue("q2", arguments={"x-queue-type": "quorum", "x-max-priority": 5})),
        d.attempt(lambda: d.queue("q3", arguments={"x-queue-type": "quorum", "x-delivery-limit": 3})),
        d.attempt(lambda: d.queue("q3", arguments={"x-queue-type": "quorum"})),
    )


@scenario
def missing_objects_are_not_found(d: Driver) -> Any:
    d.exchange("x", "direct")
    d.queue("q")
    return (
        d.attempt(lambda: d.queue("nope", passive=True)),
        d.attempt(lambda: d.bind("nope", "x", "k")),
        d.attempt(lambda: d.bind("q", "nope", "k")),
        d.attempt(lambda: d.bind_exchange("nope", "x")),
        d.attempt(lambda: d.get("nope")),
    )


@scenario
def the_default_exchange_cannot_be_bound_or_declared(d: Driver) -> Any:
    d.queue("q")
    return (d.attempt(lambda: d.bind("q", "", "q")), d.attempt(lambda: d.exchange("", "direct")))


@scenario
def quorum_and_classic_queue_types_do_not_mix(d: Driver) -> Any:
    d.queue("quorum", arguments={"x-queue-type": "quorum"})
    d.queue("classic")
    return (
        d.attempt(lambda: d.queue("quorum", arguments={"x-queue-type": "classic"})),
        d.attempt(lambda: d.queue("quorum")),
        d.attempt(lambda: d.queue("classic", arguments={"x-queue-type": "quorum"})),
    )
