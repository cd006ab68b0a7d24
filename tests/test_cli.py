"""The ``amqptasks`` command as a user runs it: the installed console script, in a project directory.

Each test runs the CLI as a subprocess with ``cwd`` set to its own directory and without the user's
AMQPTASKS_* variables, then checks what a user would see: exit codes, printed lines, and the broker's real
state through the management API. Every run also checks that no Python traceback reached the user
(see :func:`tests.cli_helpers.run`).
"""

from __future__ import annotations

import dataclasses
import shutil
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import pytest
import yaml

from amqptasks.broker import BrokerURL, ManagementClient
from amqptasks.config.versions import RabbitMQVersion
from amqptasks.constants import ENV_BROKER_URL, ENV_CONFIG
from tests.cli_helpers import Result, line_of, position, run, write

ROOT = Path(__file__).resolve().parent.parent

# Three exchanges (one made by dead_letter: auto), three queues (one a DLQ), three bindings.
SHOP = """
topology:
  exchanges:
    - name: tasks
      type: direct
    - name: notifications
      type: fanout
  queues:
    - name: billing
      max_priority: 5
      dead_letter: auto
      bindings:
        - exchange: tasks
          routing_key: billing
    - name: emails
      bindings:
        - exchange: notifications
"""
SHOP_OBJECTS = [
    "exchange 'tasks'",
    "exchange 'notifications'",
    "exchange 'amqptasks.dlx'",
    "queue 'billing'",
    "queue 'emails'",
    "queue 'billing.dlq'",
    "binding tasks -> queue billing [billing]",
    "binding notifications -> queue emails",
    "binding amqptasks.dlx -> queue billing.dlq [billing]",
]
# The management API is not listening here: the CLI must fall back to AMQP probing.
NO_MANAGEMENT = 'broker:\n  management_url: "http://127.0.0.1:9"\n'
NEW_QUEUE = "    - name: invoices\n"
BUILTIN_EXCHANGES = {"", "amq.direct", "amq.fanout", "amq.topic", "amq.headers", "amq.match"}


class Cli(Protocol):
    def __call__(self, *args: str, env: Mapping[str, str] | None = None) -> Result: ...


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    """``amqptasks ARGS...`` run in the test's own directory."""

    def invoke(*args: str, env: Mapping[str, str] | None = None) -> Result:
        return run(args, cwd=tmp_path, env=env)

    return invoke


@pytest.fixture
def project(tmp_path: Path) -> Callable[..., str]:
    """Writes a YAML file into the test's directory (``app.yaml`` unless named); returns its text."""

    def make(text: str, name: str = "app.yaml") -> str:
        return write(tmp_path, name, text)

    return make


def names(items: list[dict[str, Any]]) -> set[str]:
    return {item["name"] for item in items}


def edges(mgmt: ManagementClient, vhost: BrokerURL) -> set[tuple[str, str, str]]:
    return {(b["source"], b["destination"], b["routing_key"]) for b in mgmt.list_bindings(vhost.vhost) if b["source"]}


def conflicting_shop() -> str:
    """SHOP with billing's priority raised from 5 to 10 (RabbitMQ cannot change it) and a new queue added."""
    return SHOP.replace("max_priority: 5", "max_priority: 10") + NEW_QUEUE


# --- validate ------------------------------------------------------------------------------------------


def test_validate_accepts_a_valid_file_and_summarises_it(cli: Cli, project: Callable[..., str]) -> None:
    project(SHOP)

    result = cli("topology", "validate", "app.yaml")

    assert result.code == 0, str(result)
    # the .dlq queue dead_letter: auto adds counts as the user's; the shared DLX and its binding as amqptasks' own
    assert (
        result.stdout
        == "app.yaml: valid (yours: 2 exchanges, 3 queues, 2 bindings; amqptasks' own: 1 exchange, 1 binding)\n"
    )
    assert result.stderr == ""


def test_validate_points_at_a_misspelled_key_and_suggests_the_right_one(cli: Cli, project: Callable[..., str]) -> None:
    text = project(SHOP.replace("max_priority", "max_prority"))
    line, col = position(text, "max_prority:", "max_prority")

    result = cli("topology", "validate", "app.yaml")

    assert result.code == 2, str(result)
    assert (
        f"app.yaml:{line}:{col}: queue 'billing': unknown key 'max_prority' (did you mean 'max_priority'?)"
        in result.stderr.splitlines()
    )
    assert result.stdout == ""


def test_validate_reports_every_error_in_one_run(cli: Cli, project: Callable[..., str]) -> None:
    text = project(
        """
        topology:
          exchanges:
            - name: tasks
          queues:
            - name: billing
              max_prority: 5
            - name: emails
              durable: maybe
            - name: sms
              bindings:
                - exchange: taks
                  routing_key: sms
        """
    )
    typo, durable, exchange = (
        position(text, "max_prority", "max_prority"),
        position(text, "durable: maybe", "maybe"),
        position(text, "exchange: taks", "taks"),
    )

    result = cli("topology", "validate", "app.yaml")

    assert result.code == 2, str(result)
    assert result.stderr.splitlines() == [
        f"app.yaml:{typo[0]}:{typo[1]}: queue 'billing': unknown key 'max_prority' (did you mean 'max_priority'?)",
        f"app.yaml:{durable[0]}:{durable[1]}: queue 'emails': durable must be true or false, got 'maybe'",
        f"app.yaml:{exchange[0]}:{exchange[1]}: queue 'sms': binding: exchange 'taks' is not declared"
        " (did you mean 'tasks'?)",
        "app.yaml: 3 errors",
    ]


def test_validate_json_lists_each_diagnostic_with_file_line_and_column(cli: Cli, project: Callable[..., str]) -> None:
    text = project(SHOP.replace("max_priority", "max_prority"))
    line, col = position(text, "max_prority:", "max_prority")

    result = cli("topology", "validate", "app.yaml", "--json")

    assert result.code == 2, str(result)
    assert result.json() == {
        "valid": False,
        "diagnostics": [
            {
                "file": "app.yaml",
                "line": line,
                "column": col,
                "severity": "error",
                "message": "queue 'billing': unknown key 'max_prority' (did you mean 'max_priority'?)",
            }
        ],
    }


def test_validate_json_of_a_valid_file_says_valid(cli: Cli, project: Callable[..., str]) -> None:
    project(SHOP)

    result = cli("topology", "validate", "app.yaml", "--json")

    assert result.code == 0, str(result)
    assert result.json() == {"valid": True, "diagnostics": []}


def test_validate_prints_warnings_but_succeeds(cli: Cli, project: Callable[..., str]) -> None:
    text = project(
        SHOP.replace(
            "        - exchange: notifications\n", "        - exchange: notifications\n          routing_key: mail\n"
        )
    )
    line, col = position(text, "routing_key: mail", "mail")

    result = cli("topology", "validate", "app.yaml")

    assert result.code == 0, str(result)
    assert result.stdout.startswith("app.yaml: valid")
    assert result.stderr.splitlines() == [
        f"app.yaml:{line}:{col}: warning: queue 'emails': binding: fanout exchange 'notifications' ignores "
        "routing keys; remove it"
    ]


# --- which configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [("topology", "validate"), ("topology", "plan"), ("topology", "apply"), ("config", "show")],
    ids=" ".join,
)
def test_a_command_without_config_asks_for_amqptasks_config(cli: Cli, command: tuple[str, ...]) -> None:
    result = cli(*command)

    assert result.code == 2, str(result)
    assert "no configuration given: pass CONFIG or set AMQPTASKS_CONFIG" in result.stderr
    assert "Traceback" not in result.stderr


def test_amqptasks_config_names_the_file_when_config_is_not_given(cli: Cli, project: Callable[..., str]) -> None:
    project(SHOP, "deploy/app.yaml")

    result = cli("topology", "validate", env={ENV_CONFIG: "deploy/app.yaml"})

    assert result.code == 0, str(result)
    assert result.stdout.startswith("deploy/app.yaml: valid")


def test_config_argument_beats_amqptasks_config(cli: Cli, project: Callable[..., str]) -> None:
    project(SHOP)
    project("topology: [not, a, mapping]\n", "broken.yaml")

    result = cli("topology", "validate", "app.yaml", env={ENV_CONFIG: "broken.yaml"})

    assert result.code == 0, str(result)
    assert result.stdout.startswith("app.yaml: valid")


# --- plan ----------------------------------------------------------------------------------------------


@pytest.mark.broker
def test_plan_on_a_fresh_vhost_lists_every_object_to_create_and_changes_nothing(
    cli: Cli, project: Callable[..., str], vhost: BrokerURL, mgmt: ManagementClient
) -> None:
    project(SHOP)

    result = cli("topology", "plan", "app.yaml", "--broker", vhost.to_url(), "--verbose")

    assert result.code == 0, str(result)
    assert result.stdout.startswith(f"plan for {vhost.masked()} (read through the management API):\n")
    assert sorted(result.change_lines) == sorted(f"+ create    {obj}" for obj in SHOP_OBJECTS)
    assert result.stdout.endswith("9 to create\n")
    assert names(mgmt.list_queues(vhost.vhost)) == set()
    assert not names(mgmt.list_exchanges(vhost.vhost)) & {"tasks", "notifications", "amqptasks.dlx"}


@pytest.mark.broker
def test_plan_detailed_exitcode_is_2_while_changes_are_pending(
    cli: Cli, project: Callable[..., str], vhost: BrokerURL
) -> None:
    project(SHOP)

    result = cli("topology", "plan", "app.yaml", "--broker", vhost.to_url(), "--detailed-exitcode")

    assert result.code == 2, str(result)
    assert result.stdout.endswith("9 to create\n")


@pytest.mark.broker
def test_plan_after_apply_reports_everything_unchanged(cli: Cli, project: Callable[..., str], vhost: BrokerURL) -> None:
    project(SHOP)
    assert cli("topology", "apply", "app.yaml", "--broker", vhost.to_url()).code == 0

    result = cli("topology", "plan", "app.yaml", "--broker", vhost.to_url(), "--detailed-exitcode", "-v")

    assert result.code == 0, str(result)
    assert sorted(result.change_lines) == sorted(f"= unchanged {obj}" for obj in SHOP_OBJECTS)
    assert result.stdout.endswith("9 unchanged - nothing to change\n")


@pytest.mark.broker
def test_plan_json_says_whether_there_are_changes(cli: Cli, project: Callable[..., str], vhost: BrokerURL) -> None:
    project(SHOP)

    before = cli("topology", "plan", "app.yaml", "--broker", vhost.to_url(), "--json")
    cli("topology", "apply", "app.yaml", "--broker", vhost.to_url())
    after = cli("topology", "plan", "app.yaml", "--broker", vhost.to_url(), "--json")

    assert (before.code, after.code) == (0, 0), f"{before}\n{after}"
    first, second = before.json(), after.json()
    assert first["broker"] == vhost.masked()
    assert first["source"] == "management API"
    assert first["has_changes"] is True
    assert {c["action"] for c in first["changes"]} == {"create"}
    assert {(c["kind"], c["name"]) for c in first["changes"]} >= {("queue", "billing"), ("exchange", "tasks")}
    assert len(first["changes"]) == len(SHOP_OBJECTS)
    assert second["has_changes"] is False
    assert {c["action"] for c in second["changes"]} == {"unchanged"}


@pytest.mark.broker
def test_apply_refuses_an_invalid_config_before_touching_the_broker(
    cli: Cli, project: Callable[..., str], vhost: BrokerURL, mgmt: ManagementClient
) -> None:
    project(SHOP.replace("max_priority", "max_prority"))

    result = cli("topology", "apply", "app.yaml", "--broker", vhost.to_url())

    assert result.code == 2, str(result)
    assert "unknown key 'max_prority'" in result.stderr
    assert "1 error; nothing was done" in result.stderr
    assert names(mgmt.list_queues(vhost.vhost)) == set()


def test_plan_detailed_exitcode_reports_an_invalid_config_as_an_error_not_as_changes(
    cli: Cli, project: Callable[..., str]
) -> None:
    project(SHOP.replace("max_priority", "max_prority"))

    result = cli("topology", "plan", "app.yaml", "--detailed-exitcode")

    assert result.code == 1, str(result)
    assert "unknown key 'max_prority'" in result.stderr


def test_plan_detailed_exitcode_reports_a_missing_config_as_an_error_not_as_changes(cli: Cli) -> None:
    result = cli("topology", "plan", "--detailed-exitcode")

    assert result.code == 1, str(result)
    assert "AMQPTASKS_CONFIG" in result.stderr


# --- apply ---------------------------------------------------------------------------------------------


@pytest.mark.broker
def test_apply_creates_the_topology_and_a_second_apply_creates_nothing(
    cli: Cli, project: Callable[..., str], vhost: BrokerURL, mgmt: ManagementClient, broker_version: RabbitMQVersion
) -> None:
    project(SHOP)

    first = cli("topology", "apply", "app.yaml", "--broker", vhost.to_url(), "--verbose")
    second = cli("topology", "apply", "app.yaml", "--broker", vhost.to_url())

    assert first.code == 0, str(first)
    assert sorted(first.change_lines) == sorted(f"+ create    {obj}" for obj in SHOP_OBJECTS)
    assert first.stdout.endswith(f"applied to {vhost.masked()}: 9 created, 0 deleted, 0 unchanged\n")
    assert second.code == 0, str(second)
    assert second.stdout == f"applied to {vhost.masked()}: 0 created, 0 deleted, 9 unchanged\n"
    exchanges = {e["name"]: e for e in mgmt.list_exchanges(vhost.vhost)}
    assert (exchanges["tasks"]["type"], exchanges["notifications"]["type"]) == ("direct", "fanout")
    assert exchanges["amqptasks.dlx"]["type"] == "direct"
    assert names(mgmt.list_queues(vhost.vhost)) == {"billing", "emails", "billing.dlq"}
    billing = mgmt.get_queue(vhost.vhost, "billing")
    assert billing is not None
    assert billing["durable"] is True
    declared = {"x-max-priority": 5, "x-dead-letter-exchange": "amqptasks.dlx", "x-dead-letter-routing-key": "billing"}
    # RabbitMQ 4.0+ lists the type it chose among the arguments; 3.x lists only what was declared.
    assert billing["arguments"] == broker_version.listed_arguments(declared)
    assert edges(mgmt, vhost) == {
        ("tasks", "billing", "billing"),
        ("notifications", "emails", ""),
        ("amqptasks.dlx", "billing.dlq", "billing"),
    }


@pytest.mark.broker
def test_example_config_applies_from_another_directory_and_then_has_nothing_to_change(
    cli: Cli, tmp_path: Path, vhost: BrokerURL
) -> None:
    if not (ROOT / "config" / "app.yaml").exists():
        pytest.skip("config/app.yaml is not in this checkout")
    shutil.copytree(ROOT / "config", tmp_path / "config")

    applied = cli("topology", "apply", "config/app.yaml", "--broker", vhost.to_url())
    planned = cli("topology", "plan", "config/app.yaml", "--broker", vhost.to_url(), "--detailed-exitcode")

    assert applied.code == 0, str(applied)
    assert "queue 'reports.archive'" in applied.stdout  # from the included app.d/reporting.yaml
    assert planned.code == 0, str(planned)
    assert all(line.startswith("= unchanged ") for line in planned.change_lines), str(planned)


# --- conflicts -----------------------------------------------------------------------------------------


@pytest.mark.broker
def test_apply_refuses_a_conflicting_change_and_creates_nothing_else(
    cli: Cli, project: Callable[..., str], vhost: BrokerURL, mgmt: ManagementClient
) -> None:
    project(SHOP)
    assert cli("topology", "apply", "app.yaml", "--broker", vhost.to_url()).code == 0
    text = project(conflicting_shop())

    result = cli("topology", "apply", "app.yaml", "--broker", vhost.to_url())

    assert result.code == 1, str(result)
    line = line_of(text, "max_priority: 10")
    assert f"  queue 'billing': x-max-priority is 5 on the broker, 10 in app.yaml:{line}" in result.stderr.splitlines()
    assert result.stderr.startswith("error: the broker differs from the configuration; nothing was changed:")
    assert "Traceback" not in result.stderr
    billing = mgmt.get_queue(vhost.vhost, "billing")
    assert billing is not None
    assert billing["arguments"]["x-max-priority"] == 5
    assert mgmt.get_queue(vhost.vhost, "invoices") is None


@pytest.mark.broker
def test_plan_shows_a_conflict_and_exits_1(cli: Cli, project: Callable[..., str], vhost: BrokerURL) -> None:
    project(SHOP)
    assert cli("topology", "apply", "app.yaml", "--broker", vhost.to_url()).code == 0
    text = project(conflicting_shop())

    result = cli("topology", "plan", "app.yaml", "--broker", vhost.to_url(), "--detailed-exitcode")

    assert result.code == 1, str(result)
    line = line_of(text, "max_priority: 10")
    assert f"! conflict  queue 'billing': x-max-priority is 5 on the broker, 10 in app.yaml:{line}" in (
        result.change_lines
    )
    assert "+ create    queue 'invoices'" in result.change_lines
    assert result.stdout.endswith("1 to create, 8 unchanged, 1 conflict\n")


# --- prune ---------------------------------------------------------------------------------------------


@pytest.fixture
def strays(cli: Cli, project: Callable[..., str], vhost: BrokerURL, channel: Any) -> BrokerURL:
    """SHOP applied, plus a queue, an exchange and a binding that the YAML does not declare."""
    project(SHOP)
    assert cli("topology", "apply", "app.yaml", "--broker", vhost.to_url()).code == 0
    channel.exchange_declare("stray.exchange", "fanout", durable=True)
    channel.queue_declare("stray.queue", durable=True)
    channel.queue_bind("stray.queue", "amq.direct", routing_key="stray")
    channel.queue_bind("billing", "tasks", routing_key="legacy")
    return vhost


STRAY_DELETIONS = [
    "- delete    binding tasks -> queue billing [legacy]",
    "- delete    queue 'stray.queue'",
    "- delete    exchange 'stray.exchange'",
]


@pytest.mark.broker
def test_plan_prune_lists_what_the_yaml_no_longer_declares(cli: Cli, strays: BrokerURL) -> None:
    pruning = cli("topology", "plan", "app.yaml", "--broker", strays.to_url(), "--prune", "--detailed-exitcode")
    plain = cli("topology", "plan", "app.yaml", "--broker", strays.to_url(), "--detailed-exitcode")

    assert pruning.code == 2, str(pruning)
    deletions = [line for line in pruning.change_lines if line.startswith("- delete")]
    assert deletions == STRAY_DELETIONS
    assert pruning.stdout.endswith("9 unchanged, 3 to delete\n")
    assert plain.code == 0, str(plain)
    assert not any("delete" in line for line in plain.change_lines)


@pytest.mark.broker
def test_apply_prune_deletes_only_what_the_yaml_does_not_declare(
    cli: Cli, strays: BrokerURL, mgmt: ManagementClient
) -> None:
    result = cli("topology", "apply", "app.yaml", "--broker", strays.to_url(), "--prune")

    assert result.code == 0, str(result)
    assert result.change_lines == STRAY_DELETIONS
    assert result.stdout.endswith(": 0 created, 3 deleted, 9 unchanged\n")
    assert names(mgmt.list_queues(strays.vhost)) == {"billing", "emails", "billing.dlq"}
    assert names(mgmt.list_exchanges(strays.vhost)) >= BUILTIN_EXCHANGES | {"tasks", "notifications", "amqptasks.dlx"}
    assert "stray.exchange" not in names(mgmt.list_exchanges(strays.vhost))
    assert ("tasks", "billing", "legacy") not in edges(mgmt, strays)


@pytest.mark.broker
def test_apply_without_prune_leaves_undeclared_objects_alone(
    cli: Cli, strays: BrokerURL, mgmt: ManagementClient
) -> None:
    result = cli("topology", "apply", "app.yaml", "--broker", strays.to_url())

    assert result.code == 0, str(result)
    assert result.stdout.endswith(": 0 created, 0 deleted, 9 unchanged\n")
    assert "stray.queue" in names(mgmt.list_queues(strays.vhost))
    assert "stray.exchange" in names(mgmt.list_exchanges(strays.vhost))
    assert {("tasks", "billing", "legacy"), ("amq.direct", "stray.queue", "stray")} <= edges(mgmt, strays)


# --- without the management API: AMQP probing ----------------------------------------------------------


@pytest.mark.broker
def test_plan_without_management_api_probes_over_amqp_and_creates_nothing(
    cli: Cli, project: Callable[..., str], vhost: BrokerURL, mgmt: ManagementClient
) -> None:
    project(SHOP)
    assert cli("topology", "apply", "app.yaml", "--broker", vhost.to_url()).code == 0
    project(NO_MANAGEMENT + SHOP.lstrip("\n") + NEW_QUEUE)

    result = cli("topology", "plan", "app.yaml", "--broker", vhost.to_url())

    assert result.code == 0, str(result)
    assert result.stdout.startswith(f"plan for {vhost.masked()} (read through the AMQP probe):\n")
    assert "= unchanged queue 'billing'" in result.change_lines
    assert "= unchanged exchange 'tasks'" in result.change_lines
    assert "+ create    queue 'invoices'" in result.change_lines
    assert "~ ensure    binding tasks -> queue billing [billing]" in result.change_lines
    assert "note: management API unreachable: read by AMQP probing" in result.stdout
    assert mgmt.get_queue(vhost.vhost, "invoices") is None


@pytest.mark.broker
def test_probing_names_the_conflicting_argument_and_both_values(
    cli: Cli, project: Callable[..., str], vhost: BrokerURL, mgmt: ManagementClient
) -> None:
    project(SHOP)
    assert cli("topology", "apply", "app.yaml", "--broker", vhost.to_url()).code == 0
    text = project(NO_MANAGEMENT + conflicting_shop().lstrip("\n"))

    planned = cli("topology", "plan", "app.yaml", "--broker", vhost.to_url())
    applied = cli("topology", "apply", "app.yaml", "--broker", vhost.to_url())

    line = line_of(text, "max_priority: 10")
    assert planned.code == 1, str(planned)
    assert "(read through the AMQP probe)" in planned.stdout
    assert f"! conflict  queue 'billing': x-max-priority is 5 on the broker, 10 in app.yaml:{line}" in (
        planned.change_lines
    )
    assert applied.code == 1, str(applied)
    assert f"queue 'billing': x-max-priority is 5 on the broker, 10 in app.yaml:{line}" in applied.stderr
    billing = mgmt.get_queue(vhost.vhost, "billing")
    assert billing is not None
    assert billing["arguments"]["x-max-priority"] == 5
    assert mgmt.get_queue(vhost.vhost, "invoices") is None


@pytest.mark.broker
def test_apply_without_management_api_creates_the_topology(
    cli: Cli, project: Callable[..., str], vhost: BrokerURL, mgmt: ManagementClient
) -> None:
    project(NO_MANAGEMENT + SHOP.lstrip("\n"))

    result = cli("topology", "apply", "app.yaml", "--broker", vhost.to_url())

    assert result.code == 0, str(result)
    assert names(mgmt.list_queues(vhost.vhost)) == {"billing", "emails", "billing.dlq"}
    assert edges(mgmt, vhost) >= {("tasks", "billing", "billing"), ("notifications", "emails", "")}


@pytest.mark.broker
@pytest.mark.parametrize("command", ["plan", "apply"])
def test_prune_without_management_api_says_the_api_is_needed(
    cli: Cli, project: Callable[..., str], vhost: BrokerURL, mgmt: ManagementClient, command: str
) -> None:
    project(NO_MANAGEMENT + SHOP.lstrip("\n"))

    result = cli("topology", command, "app.yaml", "--broker", vhost.to_url(), "--prune")

    assert result.code == 1, str(result)
    assert result.stderr.startswith("error: --prune needs the management API to list what the vhost holds;")
    assert "rabbitmq-plugins enable rabbitmq_management" in result.stderr
    assert "Traceback" not in result.stderr
    assert names(mgmt.list_queues(vhost.vhost)) == set()


# --- config show ---------------------------------------------------------------------------------------

SHOW = """
include:
  - team/extra.yaml
broker:
  url: amqp://guest:Yaml-Secret-1@127.0.0.1:5672/from-yaml
  management_url: http://guest:Mgmt-Secret-2@127.0.0.1:15672
topology:
  queues:
    - name: main
"""
EXTRA = """
topology:
  queues:
    - name: included
"""


def test_config_show_masks_passwords_and_shows_defaults_and_includes(cli: Cli, project: Callable[..., str]) -> None:
    project(SHOW)
    project(EXTRA, "team/extra.yaml")

    result = cli("config", "show", "app.yaml")

    assert result.code == 0, str(result)
    shown = yaml.safe_load(result.stdout)
    assert shown["broker"]["url"] == "amqp://guest:****@127.0.0.1:5672/from-yaml"
    assert shown["broker"]["management_url"] == "http://guest:****@127.0.0.1:15672"
    assert shown["broker"]["heartbeat"] == 60
    assert [q["name"] for q in shown["topology"]["queues"]] == ["main", "included"]
    assert shown["topology"]["queues"][1]["durable"] is True
    for secret in ("Yaml-Secret-1", "Mgmt-Secret-2"):
        assert secret not in result.stdout + result.stderr


def test_config_show_json_never_prints_the_password_given_with_broker(cli: Cli, project: Callable[..., str]) -> None:
    project(SHOW)
    project(EXTRA, "team/extra.yaml")

    result = cli("config", "show", "app.yaml", "--json", "--broker", "amqp://guest:Flag-Secret-3@127.0.0.1:5672/x")

    assert result.code == 0, str(result)
    assert result.json()["broker"]["url"] == "amqp://guest:****@127.0.0.1:5672/x"
    assert "Flag-Secret-3" not in result.stdout + result.stderr
    assert "Yaml-Secret-1" not in result.stdout + result.stderr


def test_broker_option_beats_the_environment_which_beats_the_yaml(cli: Cli, project: Callable[..., str]) -> None:
    project(SHOW)
    project(EXTRA, "team/extra.yaml")
    env = {ENV_BROKER_URL: "amqp://guest:guest@127.0.0.1:5672/from-env"}

    from_yaml = cli("config", "show", "app.yaml", "--json")
    from_env = cli("config", "show", "app.yaml", "--json", env=env)
    from_flag = cli(
        "config", "show", "app.yaml", "--json", "--broker", "amqp://guest:guest@127.0.0.1/from-flag", env=env
    )

    assert [r.json()["broker"]["url"].rpartition("/")[2] for r in (from_yaml, from_env, from_flag)] == [
        "from-yaml",
        "from-env",
        "from-flag",
    ]


# --- an unreachable or wrong broker --------------------------------------------------------------------


@pytest.mark.broker
@pytest.mark.parametrize(
    "command",
    ["plan", "apply"],
)
def test_unreachable_broker_is_an_error_that_says_what_to_do(
    cli: Cli, project: Callable[..., str], broker: BrokerURL, command: str
) -> None:
    project(SHOP)
    nowhere = dataclasses.replace(broker, port=1)

    result = cli("topology", command, "app.yaml", "--broker", nowhere.to_url())

    assert result.code == 1, str(result)
    assert result.stderr.splitlines()[0] == (
        f"error: cannot connect to {nowhere.masked()}: connection refused "
        "(is RabbitMQ running? set AMQPTASKS_BROKER_URL or --broker)"
    )
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["plan", "apply"])
def test_unreachable_broker_error_never_shows_the_password(cli: Cli, project: Callable[..., str], command: str) -> None:
    project(SHOP)

    result = cli("topology", command, "app.yaml", "--broker", "amqp://guest:Sup3r-Secret@127.0.0.1:1/%2F")

    assert result.code == 1, str(result)
    assert "error: cannot connect to amqp://guest:****@127.0.0.1:1/%2F" in result.stderr
    assert "Sup3r-Secret" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.broker
@pytest.mark.parametrize("command", ["plan", "apply"])
def test_a_missing_vhost_is_named_in_the_error(
    cli: Cli, project: Callable[..., str], broker: BrokerURL, command: str
) -> None:
    project(SHOP)
    missing = broker.with_vhost(f"amqptasks-test-absent-{uuid.uuid4().hex[:8]}")

    result = cli("topology", command, "app.yaml", "--broker", missing.to_url())

    assert result.code == 1, str(result)
    assert result.stderr.startswith("error: ")
    assert f"vhost {missing.vhost!r}" in result.stderr


@pytest.mark.broker
def test_broker_option_beats_an_unreachable_amqptasks_broker_url(
    cli: Cli, project: Callable[..., str], vhost: BrokerURL, mgmt: ManagementClient
) -> None:
    project(SHOP)
    env = {ENV_BROKER_URL: "amqp://guest:Env-Secret@127.0.0.1:1/%2F"}

    planned = cli("topology", "plan", "app.yaml", "--broker", vhost.to_url(), env=env)
    applied = cli("topology", "apply", "app.yaml", "--broker", vhost.to_url(), env=env)

    assert planned.code == 0, str(planned)
    assert planned.stdout.startswith(f"plan for {vhost.masked()} ")
    assert applied.code == 0, str(applied)
    assert names(mgmt.list_queues(vhost.vhost)) == {"billing", "emails", "billing.dlq"}


@pytest.mark.broker
def test_apply_with_an_unknown_broker_url_parameter_is_an_error_not_a_traceback(
    cli: Cli, project: Callable[..., str], vhost: BrokerURL
) -> None:
    project(SHOP)

    result = cli("topology", "apply", "app.yaml", "--broker", vhost.to_url() + "?bogus=1")

    assert result.code in (1, 2), str(result)
    assert "unknown query parameter 'bogus'" in result.stderr


def test_validate_rejects_an_unknown_broker_url_parameter(cli: Cli, project: Callable[..., str]) -> None:
    project(SHOP)

    result = cli("topology", "validate", "app.yaml", "--broker", "amqp://guest:guest@127.0.0.1:5672/v?bogus=1")

    assert result.code == 2, str(result)
    assert "unknown query parameter 'bogus'" in result.stderr


@pytest.mark.broker
def test_tls_options_with_an_amqp_url_are_ignored_as_the_warning_says(
    cli: Cli, project: Callable[..., str], vhost: BrokerURL, mgmt: ManagementClient
) -> None:
    project("broker:\n  tls:\n    verify: true\n" + SHOP.lstrip("\n"))

    result = cli("topology", "apply", "app.yaml", "--broker", vhost.to_url())

    assert "warning: broker: tls options are ignored for an amqp:// URL" in result.stderr
    assert result.code == 0, str(result)
    assert "billing" in names(mgmt.list_queues(vhost.vhost))


# --- export, graph, schema -----------------------------------------------------------------------------


def test_export_writes_definitions_for_the_broker_urls_vhost(
    cli: Cli, project: Callable[..., str], tmp_path: Path
) -> None:
    project(SHOP)

    result = cli("topology", "export", "app.yaml", "--broker", "amqp://guest:guest@127.0.0.1/shop", "-o", "defs.json")

    assert result.code == 0, str(result)
    assert result.stdout == ""
    assert result.stderr == "wrote definitions for vhost 'shop' to defs.json\n"
    document = yaml.safe_load((tmp_path / "defs.json").read_text(encoding="utf-8"))  # JSON is YAML
    assert document["vhosts"] == [{"name": "shop"}]
    assert names(document["exchanges"]) == {"tasks", "notifications", "amqptasks.dlx"}
    assert names(document["queues"]) == {"billing", "emails", "billing.dlq"}
    assert len(document["bindings"]) == 3
    everything = document["exchanges"] + document["queues"] + document["bindings"]
    assert {item["vhost"] for item in everything} == {"shop"}


@pytest.mark.broker
def test_exported_definitions_import_into_the_topology_plan_expects(
    cli: Cli, project: Callable[..., str], vhost: BrokerURL, mgmt: ManagementClient
) -> None:
    project(SHOP)

    exported = cli("topology", "export", "app.yaml", "--vhost", vhost.vhost)
    mgmt.import_definitions(vhost.vhost, exported.json())
    planned = cli("topology", "plan", "app.yaml", "--broker", vhost.to_url(), "--detailed-exitcode")

    assert exported.code == 0, str(exported)
    assert exported.json()["vhosts"] == [{"name": vhost.vhost}]
    assert planned.code == 0, str(planned)
    assert planned.stdout.endswith("9 unchanged - nothing to change\n")


def test_graph_mermaid_prints_a_flowchart(cli: Cli, project: Callable[..., str]) -> None:
    project(SHOP)

    result = cli("topology", "graph", "app.yaml", "--format", "mermaid")

    assert result.code == 0, str(result)
    assert result.stdout.split(maxsplit=1)[0] in ("graph", "flowchart")
    for name in ("tasks", "notifications", "billing", "emails", "billing.dlq"):
        assert name in result.stdout


@pytest.mark.skipif(shutil.which("dot") is not None, reason="graphviz is installed; this checks its absence")
def test_graph_png_without_graphviz_says_to_install_it(cli: Cli, project: Callable[..., str], tmp_path: Path) -> None:
    project(SHOP)

    result = cli("topology", "graph", "app.yaml", "--format", "png", "-o", "topology.png")

    assert result.code == 1, str(result)
    assert result.stderr.startswith("error: graphviz's 'dot' is not installed; install graphviz")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "topology.png").exists()


@pytest.mark.parametrize("command", ["export", "graph"])
def test_writing_output_into_a_missing_directory_is_an_error_not_a_traceback(
    cli: Cli, project: Callable[..., str], command: str
) -> None:
    project(SHOP)

    result = cli("topology", command, "app.yaml", "-o", "no/such/dir/out.txt")

    assert result.code == 1, str(result)
    assert "no/such/dir/out.txt" in result.stderr


def test_schema_prints_the_json_schema(cli: Cli) -> None:
    result = cli("topology", "schema")

    assert result.code == 0, str(result)
    schema = result.json()
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert {"broker", "topology", "include"} <= set(schema["properties"])
