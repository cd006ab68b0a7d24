"""Shared steps of the topology tests: provision a YAML text into the test's vhost, read queues."""

from __future__ import annotations

from typing import Any

from amqptasks.broker import BrokerURL
from amqptasks.config import Config, load_config_text
from amqptasks.topology import provision


def provisioned(vhost: BrokerURL, yaml_text: str) -> Config:
    """Given a YAML topology, when it is applied to the test vhost, then it is there."""
    config = load_config_text(yaml_text, "app.yaml", broker_url=vhost.to_url())
    provision(config)
    return config


def drain(channel: Any, queue: str) -> list[tuple[Any, Any, bytes]]:
    """Every message now in *queue* (acked), oldest first."""
    messages = []
    while True:
        method, props, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return messages
        messages.append((method, props, body))


def bodies(channel: Any, queue: str) -> list[str]:
    return [body.decode() for _, _, body in drain(channel, queue)]


def confirmed_publish(channel: Any, exchange: str, routing_key: str, body: str, **props: Any) -> None:
    import pika

    channel.confirm_delivery()
    channel.basic_publish(exchange, routing_key, body.encode(), pika.BasicProperties(**props))
