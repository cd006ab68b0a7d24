"""The amqptasks pytest plugin (registered by the ``pytest11`` entry point when amqptasks is installed).

Settings (``[tool.pytest.ini_options]`` or ``pytest.ini``):

- ``amqptasks_app = "myproject.tasks:app"``: the app under test. Its module is imported after the plugin sets
  ``AMQPTASKS_BROKER_URL=memory://`` for the session, so an app built at import time runs on memory://.
- ``amqptasks_config = "config/app.yaml"``: without ``amqptasks_app``, the fixture builds an app from this YAML
  on a memory:// broker of its own (register tasks on it in the test or a fixture).
- ``amqptasks_rabbitmq_url``: the RabbitMQ for marked tests (default ``$AMQPTASKS_TEST_RABBITMQ_URL``, else
  ``amqp://guest:guest@localhost:5672/``); a vhost is created for each run and deleted after it.

Fixtures: ``amqptasks_app`` (the app, on an empty broker for every test), ``amqptasks_drain`` (call it like
:func:`amqptasks.testing.drain`, without the app) and ``amqptasks_messages`` (``amqptasks_messages("work.dlq")``).

Marker: ``@pytest.mark.amqptasks_rabbitmq`` runs the test twice: ``[memory]`` here, and ``[rabbitmq]`` in a child
pytest whose app runs on a real RabbitMQ vhost, where ``amqptasks_drain`` runs a real ``amqptasks worker --burst``.
The RabbitMQ run is skipped with a reason when no broker is reachable, and fails instead under ``CI=true``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from amqptasks.app import App
from amqptasks.constants import ENV_BROKER_URL
from amqptasks.testing.fixtures import ENV_RABBITMQ_RUN, drain_for, load_app, messages_for, reset
from amqptasks.testing.queues import QueuedMessage

MARKER = "amqptasks_rabbitmq"
DEFAULT_RABBITMQ_URL = "amqp://guest:guest@localhost:5672/"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("amqptasks_app", "amqptasks: the app under test, module:attribute", default="")
    parser.addini("amqptasks_config", "amqptasks: the topology YAML (when amqptasks_app is not set)", default="")
    parser.addini("amqptasks_rabbitmq_url", "amqptasks: the RabbitMQ for tests marked amqptasks_rabbitmq", default="")


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser, args: list[str]) -> None:
    # Before any conftest imports the user's tasks: an app built at import time must see memory://.
    _use_memory(early_config)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{MARKER}: run the test on memory:// and on a real RabbitMQ (own vhost)")
    _use_memory(config)


def _use_memory(config: pytest.Config) -> None:
    try:
        spec = str(config.getini("amqptasks_app"))
    except (ValueError, KeyError):
        return
    if spec and not os.environ.get(ENV_RABBITMQ_RUN):
        os.environ[ENV_BROKER_URL] = "memory://"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker(MARKER) is None:
        return
    if os.environ.get(ENV_RABBITMQ_RUN):
        metafunc.parametrize("amqptasks_broker", ["rabbitmq"], indirect=True)
    else:
        metafunc.parametrize("amqptasks_broker", ["memory", "rabbitmq"], indirect=True)


@pytest.fixture
def amqptasks_broker(request: pytest.FixtureRequest) -> str:
    """Which broker this run of a marked test uses: "memory" or "rabbitmq"."""
    return str(getattr(request, "param", "memory"))


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    callspec = getattr(pyfuncitem, "callspec", None)
    if callspec is None or callspec.params.get("amqptasks_broker") != "rabbitmq" or os.environ.get(ENV_RABBITMQ_RUN):
        return None
    _run_on_rabbitmq(pyfuncitem)
    return True


def _run_on_rabbitmq(item: pytest.Function) -> None:
    """The [rabbitmq] run: the same test in a child pytest, on a vhost of its own."""
    from amqptasks.broker.management import ManagementClient
    from amqptasks.broker.url import BrokerURL
    from amqptasks.errors import AmqpTasksError

    config = item.config
    raw = str(config.getini("amqptasks_rabbitmq_url")) or os.environ.get("AMQPTASKS_TEST_RABBITMQ_URL")
    base = BrokerURL.parse(raw or DEFAULT_RABBITMQ_URL)
    client = ManagementClient.for_broker(base)
    vhost = f"amqptasks-test-{uuid.uuid4().hex[:8]}"
    try:
        client.create_vhost(vhost)
    except AmqpTasksError as exc:
        _unavailable(f"no RabbitMQ for {item.name} at {base.masked()}: {exc}")
    try:
        client.set_permissions(vhost, base.username)
        url = base.with_vhost(vhost).to_url()
        env = {**os.environ, ENV_RABBITMQ_RUN: url, ENV_BROKER_URL: url}
        command = [sys.executable, "-m", "pytest", item.nodeid, "-p", "no:cacheprovider", "-q",
                   "--rootdir", str(config.rootpath)]  # fmt: skip
        done = subprocess.run(command, cwd=config.rootpath, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            pytest.fail(f"{item.nodeid} failed on RabbitMQ ({base.masked()}, vhost {vhost}):\n{done.stdout[-6000:]}",
                        pytrace=False)  # fmt: skip
    finally:
        client.delete_vhost(vhost)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").strip().lower() in ("true", "1"):
        pytest.fail(f"{reason} -- CI is set, so this fails instead of skipping", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def amqptasks_app(request: pytest.FixtureRequest, amqptasks_broker: str) -> Iterator[App]:
    """The app under test, on an empty broker (its YAML provisioned again on first use)."""
    config = request.config
    app = load_app(str(config.getini("amqptasks_app")), str(config.getini("amqptasks_config")), config.rootpath)
    reset(app)
    yield app
    app.close()


@pytest.fixture
def amqptasks_drain(request: pytest.FixtureRequest, amqptasks_app: App) -> Callable[..., Any]:
    """``amqptasks_drain(queues=None, *, advance_time=False, fail_fast=True, timeout=30)``."""
    spec = str(request.config.getini("amqptasks_app"))
    return lambda *args, **kwargs: drain_for(amqptasks_app, spec, *args, **kwargs)


@pytest.fixture
def amqptasks_messages(amqptasks_app: App) -> Callable[[str], list[QueuedMessage]]:
    """``amqptasks_messages(queue)``: what the queue holds, without consuming it."""
    return lambda queue: messages_for(amqptasks_app, queue)
