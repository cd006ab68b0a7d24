"""What the pytest plugin's fixtures do, without pytest: the app under test, and draining or reading its queues
on memory:// or, for the RabbitMQ run of a marked test, on a real broker through a real worker process."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from amqptasks.app import App
from amqptasks.broker.memory import broker_for, is_memory_url
from amqptasks.constants import DELAY_TIER_PREFIX, ENV_BROKER_URL
from amqptasks.testing.drain import DEFAULT_TIMEOUT, DrainResult, drain
from amqptasks.testing.queues import QueuedMessage, messages

__all__ = ["TaskFailed", "drain_for", "load_app", "messages_for", "reset"]

#: Set in the child pytest that runs a marked test against RabbitMQ: the vhost URL it runs on.
ENV_RABBITMQ_RUN = "AMQPTASKS_TEST_RABBITMQ_RUN"


class TaskFailed(AssertionError):
    """A task failed for good in the worker process of a RabbitMQ run (its failure record says how)."""


def load_app(spec: str, config: str, rootdir: Path) -> App:
    """The app under test: ``module:attribute`` (*spec*), else one built from the YAML *config* on a memory://
    broker of its own (or on the RabbitMQ vhost of a marked test's RabbitMQ run)."""
    if spec:
        module_name, _, attribute = spec.partition(":")
        if str(rootdir) not in sys.path:
            sys.path.insert(0, str(rootdir))
        app = getattr(importlib.import_module(module_name), attribute or "app", None)
        if not isinstance(app, App):
            raise TypeError(f"amqptasks_app = {spec!r} is not an amqptasks App (expected module:attribute)")
        return app
    url = os.environ.get(ENV_RABBITMQ_RUN) or f"memory://test-{uuid.uuid4().hex[:12]}"
    if not config:
        return App(broker_url=url)
    path = Path(config) if Path(config).is_absolute() else rootdir / config
    return App.from_config(path, broker_url=url)


def reset(app: App) -> None:
    """Before a test: an empty memory:// broker that gets the YAML again on first use (RabbitMQ: provisioned)."""
    if is_memory_url(app.config.broker.url):
        broker_for(app.config.broker.url).reset()
        app._provisioned = False
    else:
        app.provision()


def drain_for(app: App, spec: str, queues: Sequence[str] | None = None, *, advance_time: bool = False,
              fail_fast: bool = True, timeout: float = DEFAULT_TIMEOUT) -> DrainResult | None:  # fmt: skip
    """memory:// → :func:`amqptasks.testing.drain`; RabbitMQ → ``amqptasks worker --burst`` processes until the
    queues (and, with *advance_time*, the delay tiers) are empty: there, time passes for real."""
    if is_memory_url(app.config.broker.url):
        return drain(app, queues, advance_time=advance_time, fail_fast=fail_fast, timeout=timeout)
    if not spec:
        raise RuntimeError("a RabbitMQ run needs the app importable by a worker: set amqptasks_app = module:app")
    names = list(queues) if queues is not None else [q.name for q in app.config.topology.queues if q.type != "stream"]
    deadline = time.monotonic() + timeout
    seen_failures = set(_failures(app))
    while True:
        command = [sys.executable, "-c", "from amqptasks.cli import main; main()", "worker", "-A", spec, "--burst",
                   "-c", "1", "-Q", ",".join(names), "-l", "warning"]  # fmt: skip
        env = {**os.environ, ENV_BROKER_URL: app.config.broker.url}
        done = subprocess.run(command, env=env, capture_output=True, text=True,
                              timeout=max(1.0, deadline - time.monotonic()))  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"the worker exited with {done.returncode}:\n{done.stderr[-2000:]}")
        failures = [r for key, r in _failures(app).items() if key not in seen_failures]
        if fail_fast and failures:
            record = failures[0]
            raise TaskFailed(f"{record.get('task')}[{record.get('task_id')}] failed in the worker: "
                             f"{record.get('exc_type')}: {record.get('exc_message')}")  # fmt: skip
        if not (advance_time and _pending(app, names)):
            return None
        if time.monotonic() > deadline:
            raise TimeoutError(f"drain: messages still pending after {timeout:g} s")
        time.sleep(0.1)


def _counts(app: App, names: Sequence[str]) -> int:
    from amqptasks.broker.connection import connect

    connection = connect(app.config.broker, "amqptasks tests")
    try:
        total = 0
        for name in names:
            channel = connection.channel()
            try:
                total += int(channel.queue_declare(name, passive=True).method.message_count)
                channel.close()
            except Exception:  # a queue that does not exist holds nothing
                continue
        return total
    finally:
        connection.close()


def _pending(app: App, names: Sequence[str]) -> bool:
    tiers = [f"{DELAY_TIER_PREFIX}{level}" for level in range(32)] if app.config.delays.enabled else []
    return _counts(app, [*names, *tiers]) > 0


def _failures(app: App) -> dict[str, dict[str, Any]]:
    from amqptasks.broker.connection import connect
    from amqptasks.dlq.reader import failure_records

    connection = connect(app.config.broker, "amqptasks tests")
    try:
        return {f"{k}:{r.get('time')}": r for k, r in failure_records(connection).items()}
    finally:
        connection.close()


def messages_for(app: App, queue: str) -> list[QueuedMessage]:
    """What *queue* holds, without consuming it, on either broker (RabbitMQ: read and given back, in order)."""
    if is_memory_url(app.config.broker.url):
        return messages(app, queue)
    from amqptasks.broker.connection import connect

    connection = connect(app.config.broker, "amqptasks tests")
    try:
        channel = connection.channel()
        count = int(channel.queue_declare(queue, passive=True).method.message_count)
        found = []
        for _ in range(count):
            method, props, body = channel.basic_get(queue, auto_ack=False)
            if method is None:
                break
            properties = {k: v for k, v in vars(props).items() if k != "headers" and v is not None}
            found.append(QueuedMessage(body, dict(props.headers or {}), properties, method.exchange,
                                       method.routing_key, bool(method.redelivered)))  # fmt: skip
        channel.close()  # every message goes back, in order
        return found
    finally:
        connection.close()
