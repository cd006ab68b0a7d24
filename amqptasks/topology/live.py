"""Plan and provision a configuration against the live broker it names."""

from __future__ import annotations

from dataclasses import replace

import pika

from amqptasks.broker.connection import connect as connect_blocking
from amqptasks.broker.management import ManagementClient
from amqptasks.broker.management_target import management_client as checked_management_client
from amqptasks.broker.memory import is_memory_url
from amqptasks.broker.server import server_version
from amqptasks.broker.url import BrokerURL
from amqptasks.config import version_rules
from amqptasks.config.diagnostics import Diagnostics
from amqptasks.config.model import Broker, Config
from amqptasks.config.versions import RabbitMQVersion
from amqptasks.errors import BrokerError, ConfigError, ManagementAPIError
from amqptasks.topology.apply import ApplyResult, apply_plan
from amqptasks.topology.desired import desired
from amqptasks.topology.observe import observe_http, probe_plan
from amqptasks.topology.plan import Plan, make_plan


def connect(broker: Broker, purpose: str) -> pika.BlockingConnection:
    """A blocking connection named for *purpose* in the management UI (unless the YAML names it)."""
    return connect_blocking(broker, broker.connection_name or f"amqptasks {purpose}")


def management_client(broker: Broker) -> ManagementClient | None:
    """The broker's management API when it answers; None sends plan to AMQP probing."""
    try:
        client = checked_management_client(BrokerURL.parse(broker.url), broker.management_url)
    except ManagementAPIError:  # none found for this broker's port: never read another broker's
        return None
    return client if client.is_reachable() else None


def plan(config: Config, *, prune: bool = False) -> Plan:
    """What ``apply`` would do. Reads through the management API when reachable, else probes over AMQP."""
    if is_memory_url(config.broker.url):
        from amqptasks.topology import memory

        return memory.plan(config, prune=prune)
    # Connect over AMQP even when the HTTP API answers: it proves the URL's port, credentials and vhost
    # are the ones the API describes, and gives RabbitMQ's own error when they are not.
    connection = connect(config.broker, "plan")
    try:
        return _plan(config, connection, prune)
    finally:
        connection.close()


def provision(config: Config, *, prune: bool = False) -> tuple[Plan, ApplyResult]:
    """Check every object against the broker; if nothing conflicts, make the missing ones."""
    if is_memory_url(config.broker.url):
        from amqptasks.topology import memory

        return memory.provision(config, prune=prune)
    connection = connect(config.broker, "provision")
    try:
        the_plan = _plan(config, connection, prune)
        return the_plan, apply_plan(the_plan, connection)
    finally:
        connection.close()


def check_version(config: Config, rabbitmq: RabbitMQVersion | None) -> None:
    """Raise :class:`ConfigError` for what *config* declares that this broker version refuses."""
    diags = Diagnostics()
    version_rules.check(config, diags, rabbitmq)
    if diags.errors:
        raise ConfigError(list(diags.errors))


def _plan(config: Config, connection: pika.BlockingConnection, prune: bool) -> Plan:
    rabbitmq = server_version(connection)
    check_version(config, rabbitmq)
    the_plan = _read_plan(config, connection, prune)
    notes = (*the_plan.notes, *version_rules.plan_notes(config, rabbitmq))
    return replace(the_plan, notes=notes, rabbitmq_version=None if rabbitmq is None else str(rabbitmq))


def _read_plan(config: Config, connection: pika.BlockingConnection, prune: bool) -> Plan:
    want = desired(config.topology, config.delays)
    client = management_client(config.broker)
    if client is not None:
        vhost = BrokerURL.parse(config.broker.url).vhost
        try:
            return make_plan(want, observe_http(client, vhost), prune=prune)
        except ManagementAPIError as exc:
            if exc.status not in (None, 401, 403):
                raise
    if prune:
        raise BrokerError(
            "--prune needs the management API to list what the vhost holds; enable it with "
            "'rabbitmq-plugins enable rabbitmq_management' or set broker.management_url"
        )
    return probe_plan(want, connection)
