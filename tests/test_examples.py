"""The examples load cleanly and show what they claim to show: config/*.yaml, and the example project in
examples/shop, run end to end by ``python3 dev.py demo`` as a new user (and CI) runs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from amqptasks import topology
from amqptasks.broker import BrokerURL
from amqptasks.config import Config, DeadLetter, check_file
from amqptasks.constants import DEFAULT_BROKER_URL, DLX_EXCHANGE, ENV_BROKER_URL
from amqptasks.topology import DesiredTopology

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config"
SHOP = ROOT / "examples" / "shop"
EXAMPLES = [*sorted(CONFIG.glob("*.yaml")), SHOP / "shop.yaml"]
INCLUDED = sorted(CONFIG.glob("*.d/*.yaml"))
#: What the README promises of the demo's output.
DEMO_MAX_LINES = 200
MODELINE = "# yaml-language-server: $schema="


def load(path: Path, env: dict[str, str] | None = None, broker_url: str | None = None) -> Config:
    config, diags = check_file(path, env=env or {}, broker_url=broker_url)
    assert config is not None, [str(d) for d in diags.items]
    return config


@pytest.fixture(scope="module")
def app() -> Config:
    return load(CONFIG / "app.yaml")


@pytest.fixture(scope="module")
def app_topology(app: Config) -> DesiredTopology:
    return topology.desired(app.topology)


def test_the_examples_exist() -> None:
    assert {p.name for p in EXAMPLES} >= {"minimal.yaml", "app.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.relative_to(ROOT).as_posix() for p in EXAMPLES])
def test_example_validates_without_errors_or_warnings(path: Path) -> None:
    config, diags = check_file(path, env={})

    assert [str(d) for d in diags.items] == []
    assert config is not None


@pytest.mark.parametrize("path", EXAMPLES + INCLUDED, ids=[p.relative_to(ROOT).as_posix() for p in EXAMPLES + INCLUDED])
def test_example_points_editors_at_the_packaged_schema(path: Path) -> None:
    first_line = path.read_text(encoding="utf-8").splitlines()[0]

    assert first_line.startswith(MODELINE)
    target = (path.parent / first_line.removeprefix(MODELINE)).resolve()
    assert target == ROOT / "amqptasks" / "config" / "schema.json"


def test_minimal_is_one_exchange_one_queue_and_its_dead_letter_queue() -> None:
    desired = topology.desired(load(CONFIG / "minimal.yaml").topology)

    assert [(e.name, e.type) for e in desired.exchanges] == [("tasks", "direct"), (DLX_EXCHANGE, "direct")]
    assert [q.name for q in desired.queues] == ["default", "default.dlq"]
    assert {b.describe() for b in desired.bindings} == {
        "tasks -> queue default [default]",
        f"{DLX_EXCHANGE} -> queue default.dlq [default]",
    }


def test_app_uses_every_exchange_type(app: Config) -> None:
    assert {e.type for e in app.topology.exchanges} == {"direct", "topic", "fanout", "headers"}


def test_app_has_a_classic_priority_queue(app_topology: DesiredTopology) -> None:
    priority = [q for q in app_topology.queues if "x-max-priority" in q.arguments]

    assert priority
    assert all(q.queue_type == "classic" and q.arguments["x-max-priority"] <= 10 for q in priority)


def test_app_has_a_quorum_queue_with_a_delivery_limit(app_topology: DesiredTopology) -> None:
    assert any(q.queue_type == "quorum" and q.arguments.get("x-delivery-limit") for q in app_topology.queues)


def test_app_dead_letters_auto_to_per_queue_dlqs(app: Config, app_topology: DesiredTopology) -> None:
    auto = [q.name for q in app.topology.queues if q.dead_letter == "auto"]

    assert len(auto) >= 2
    assert app_topology.exchange(DLX_EXCHANGE) is not None
    for name in auto:
        queue = app_topology.queue(name)
        assert queue is not None and app_topology.queue(f"{name}.dlq") is not None
        assert queue.arguments["x-dead-letter-routing-key"] == name


def test_app_dead_letters_one_queue_to_an_exchange_and_key_of_its_choice(app: Config) -> None:
    explicit = [q.dead_letter for q in app.topology.queues if isinstance(q.dead_letter, DeadLetter)]

    assert explicit
    declared = {e.name for e in app.topology.exchanges}
    assert all(d.exchange in declared and d.routing_key for d in explicit)


def test_app_binds_an_exchange_to_an_exchange(app_topology: DesiredTopology) -> None:
    assert any(b.destination_type == "exchange" for b in app_topology.bindings)


def test_app_collects_unroutable_messages_in_a_queue(app_topology: DesiredTopology) -> None:
    alternates = {
        str(e.arguments["alternate-exchange"]) for e in app_topology.exchanges if "alternate-exchange" in e.arguments
    }

    assert alternates
    assert all(
        any(b.source == ae and b.destination_type == "queue" for b in app_topology.bindings) for ae in alternates
    )


def test_app_headers_bindings_match_all_and_any(app: Config, app_topology: DesiredTopology) -> None:
    headers_exchanges = {e.name for e in app.topology.exchanges if e.type == "headers"}

    modes = {b.arguments.get("x-match") for b in app_topology.bindings if b.source in headers_exchanges}

    assert {"all", "any"} <= modes


def test_app_queue_limits_use_units(app: Config) -> None:
    queues = {q.name: q for q in app.topology.queues}

    assert queues["emails"].message_ttl == 30 * 60 * 1000
    assert any(q.max_length is not None and q.overflow is not None for q in queues.values())


def test_app_takes_part_of_its_topology_from_an_include(app: Config) -> None:
    files = {q.loc.file for q in app.topology.queues} | {e.loc.file for e in app.topology.exchanges}

    assert any(f.endswith("app.d/reporting.yaml") for f in files)


def test_app_broker_url_comes_from_the_environment_with_a_local_default(app: Config) -> None:
    elsewhere = "amqp://shop:secret@rabbit.internal:5672/shop"

    from_env = load(CONFIG / "app.yaml", env={ENV_BROKER_URL: elsewhere})

    assert (app.broker.url, from_env.broker.url) == (DEFAULT_BROKER_URL, elsewhere)
    assert app.broker.heartbeat > 0 and app.broker.connection_name


def test_examples_agree_on_every_object_they_both_declare() -> None:
    # The demo applies both to one vhost: RabbitMQ refuses to redeclare an object with other properties.
    minimal, app = (topology.desired(load(CONFIG / name).topology) for name in ("minimal.yaml", "app.yaml"))

    shared_exchanges = {e.name for e in minimal.exchanges} & {e.name for e in app.exchanges}
    shared_queues = {q.name for q in minimal.queues} & {q.name for q in app.queues}

    assert shared_exchanges  # 'tasks' and amqptasks.dlx: the comparison below must compare something
    assert all(minimal.exchange(n) == app.exchange(n) for n in shared_exchanges)
    assert all(minimal.queue(n) == app.queue(n) for n in shared_queues)


@pytest.mark.broker
def test_examples_apply_to_one_vhost_and_leave_nothing_to_change(vhost: BrokerURL) -> None:
    configs = [load(CONFIG / name, broker_url=vhost.to_url()) for name in ("minimal.yaml", "app.yaml")]

    for config in configs:
        topology.provision(config)

    for config in configs:
        plan = topology.plan(config)
        assert not plan.has_changes, [c.describe() for c in plan.changes if c.action != "unchanged"]


# --- the example project and the demo ------------------------------------------------------------------------


def test_the_procfile_runs_one_worker_per_queue_of_the_example_project() -> None:
    config = load(SHOP / "shop.yaml")
    commands = [
        line.partition(":")[2].split()
        for line in (SHOP / "Procfile").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]

    profiles = [c[c.index("--profile") + 1] for c in commands]
    consumed = sorted(q for name in profiles for q in config.workers[name].queues)
    assert all(c[:4] == ["amqptasks", "worker", "-A", "tasks:app"] for c in commands)
    assert consumed == sorted(q.name for q in config.topology.queues)


def test_compose_runs_the_procfiles_workers_in_the_example_project() -> None:
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text(encoding="utf-8"))
    procfile = [
        line.partition(":")[2].split()
        for line in (SHOP / "Procfile").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    services = compose["services"]

    workers = {name: s for name, s in services.items() if name.startswith("worker-")}
    # the image's ENTRYPOINT is amqptasks; every service runs in the example project's directory. Containers have
    # hostnames of their own, so they keep the default worker name where the Procfile gives one (-n NAME).
    without_names = [c[: c.index("-n")] + c[c.index("-n") + 2 :] if "-n" in c else c for c in procfile]
    assert sorted(["amqptasks", *s["command"]] for s in workers.values()) == sorted(without_names)
    assert {s["working_dir"] for s in services.values() if "build" in s} == {"/app/examples/shop"}
    assert services["topology"]["command"] == ["topology", "apply", "shop.yaml"]
    assert (ROOT / "examples" / "shop" / "shop.yaml").is_file()


def processes_mentioning(marker: str) -> list[str]:
    """Command lines of the processes (other than this one) whose environment mentions *marker*."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


@pytest.mark.broker
@pytest.mark.timeout(300)
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc to find processes left running")
def test_the_demo_runs_tasks_in_workers_shows_a_result_and_the_dlq_and_stops_what_it_started(
    broker: BrokerURL, vhost: BrokerURL
) -> None:
    # Given the README's first command, with the test's own vhost instead of amqptasks-demo
    env = {**os.environ, ENV_BROKER_URL: broker.to_url(), "AMQPTASKS_DEMO_VHOST": vhost.vhost}

    # When it runs as CI runs it (no terminal)
    demo = subprocess.run(
        [sys.executable, str(ROOT / "dev.py"), "demo"], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=280, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    out = demo.stdout + demo.stderr
    lines = out.splitlines()

    # Then it worked, within the promised size, and ends with what to try next
    assert demo.returncode == 0, out
    assert len(lines) <= DEMO_MAX_LINES, f"{len(lines)} lines:\n{out}"
    assert "Try next:" in out and "Traceback" not in out
    # a worker process ran the tasks the service published, including both steps of the chain
    assert re.search(r"^ +orders +\| orders\.place\[[0-9a-f]{8}\] succeeded in ", out, re.MULTILINE), out
    assert re.search(r"^ +emails +\| emails\.receipt\[[0-9a-f]{8}\] succeeded in ", out, re.MULTILINE), out
    # a result fetched with get(), and the countdown's
    assert "orders.place A-2001 returned {'order': 'A-2001', 'total': '42.50 EUR'}" in out
    assert "chain orders.place | emails.receipt returned 'receipt for A-2002 (12.50 EUR) mailed'" in out
    assert re.search(r"emails.reminder with a 2 s countdown returned 'reminded ada@example.com' after [2-9]", out)
    # the failing task was retried, then dead-lettered, and dlq list shows it with its error
    assert out.count("orders.sync_inventory[") >= 3, out
    dlq = out[out.index("amqptasks dlq list orders") :]
    assert re.search(r"orders\.sync_inventory +[0-9a-f-]{36} +\('SKU-42',\) +rejected", dlq), out
    status = out[out.index("amqptasks status shop.yaml") : out.index("amqptasks dlq list orders")]
    consumers = os.cpu_count() or 1  # a worker consumes with one process per core
    assert re.search(rf"^ +orders +0 +0 +{consumers} .* 1\s*$", status, re.MULTILINE), status
    # and every process it started has exited
    assert "orders exited with 0, emails exited with 0" in out
    assert processes_mentioning(vhost.vhost) == []
