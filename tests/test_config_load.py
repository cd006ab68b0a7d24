"""Valid configuration files: what they turn into. Pure: no broker."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path
from typing import Any

import pytest

from amqptasks.config import (
    TLS,
    Binding,
    Broker,
    Config,
    DeadLetter,
    Diagnostics,
    Exchange,
    Location,
    Queue,
    QueueBinding,
    Topology,
    check_file,
    check_text,
    load_config,
)
from amqptasks.errors import ConfigError

DEFAULT_URL = "amqp://guest:guest@localhost:5672/%2F"


def write_files(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")


def shown(diags: Diagnostics) -> str:
    return "\n".join(str(d) for d in diags.items) or "(no diagnostics)"


def load(text: str, env: dict[str, str] | None = None, broker_url: str | None = None) -> Config:
    """*text* as the file app.yaml; fails the test on any diagnostic."""
    config, diags = check_text(textwrap.dedent(text), "app.yaml", broker_url=broker_url, env=env or {})
    assert not diags.items, shown(diags)
    assert config is not None
    return config


def queue_with(field: str, value: str) -> Queue:
    return load(f"topology:\n  queues:\n    - name: billing\n      {field}: {value}\n").topology.queues[0]


# --- defaults ---------------------------------------------------------------------------------------------------


def test_every_object_gets_its_documented_defaults() -> None:
    # Given: each object with its required keys only
    config = load(
        """\
        topology:
          exchanges:
            - name: events
          queues:
            - name: billing
              dead_letter:
                exchange: events
              bindings:
                - exchange: events
                  routing_key: billing
          bindings:
            - exchange: events
              queue: billing
              routing_key: refunds
        """
    )

    # Then
    assert config.include == ()
    assert config.broker == Broker(url=DEFAULT_URL, heartbeat=60, connection_name=None, management_url=None, tls=None)
    assert config.topology.provision is False
    assert config.topology.exchanges == (
        Exchange(
            name="events",
            type="direct",
            durable=True,
            auto_delete=False,
            internal=False,
            alternate_exchange=None,
            arguments={},
        ),
    )
    assert config.topology.queues == (
        Queue(
            name="billing",
            type="classic",
            durable=True,
            exclusive=False,
            auto_delete=False,
            max_priority=None,
            message_ttl=None,
            expires=None,
            max_length=None,
            max_length_bytes=None,
            overflow=None,
            dead_letter=DeadLetter(exchange="events", routing_key=None),
            delivery_limit=None,
            single_active_consumer=False,
            arguments={},
            bindings=(
                QueueBinding(
                    exchange="events", routing_key="billing", routing_keys=(), match=None, headers={}, arguments={}
                ),
            ),
        ),
    )
    assert config.topology.bindings == (
        Binding(
            exchange="events",
            queue="billing",
            to_exchange=None,
            routing_key="refunds",
            routing_keys=(),
            match=None,
            headers={},
            arguments={},
        ),
    )


def test_tls_defaults_verify_the_broker() -> None:
    config = load("broker:\n  url: amqps://rabbit\n  tls: {}\n")

    assert config.broker.tls == TLS(ca_file=None, cert_file=None, key_file=None, verify=True, server_hostname=None)


@pytest.mark.parametrize("text", ["", "\n", "# nothing here yet\n", "topology: {}\n"])
def test_an_empty_file_is_an_empty_topology_on_the_default_broker(text: str) -> None:
    config = load(text)

    assert config == Config(include=(), broker=Broker(url=DEFAULT_URL), topology=Topology())
    assert (config.topology.exchanges, config.topology.queues, config.topology.bindings) == ((), (), ())


def test_an_empty_file_on_disk_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "app.yaml").write_text("", encoding="utf-8")

    config, diags = check_file("app.yaml", env={})

    assert not diags.items
    assert config is not None
    assert config.topology == Topology()


# --- units --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("message_ttl", "30s", 30_000),
        ("message_ttl", "250ms", 250),
        ("message_ttl", "1.5s", 1_500),
        ("message_ttl", "45000", 45_000),  # a plain integer is milliseconds
        ("message_ttl", '"30 s"', 30_000),
        ("expires", "5m", 300_000),
        ("expires", "1h", 3_600_000),
        ("expires", "7d", 604_800_000),
        ("max_length_bytes", "10MiB", 10 * 2**20),
        ("max_length_bytes", "512KiB", 512 * 2**10),
        ("max_length_bytes", "1GiB", 2**30),
        ("max_length_bytes", "1GB", 10**9),
        ("max_length_bytes", "10MB", 10 * 10**6),
        ("max_length_bytes", "2kb", 2_000),
        ("max_length_bytes", "100B", 100),
        ("max_length_bytes", "1048576", 1_048_576),
        ("max_length_bytes", '"4096"', 4_096),  # a quoted number is bytes too
    ],
)
def test_durations_and_sizes_accept_units(field: str, value: str, expected: int) -> None:
    queue = queue_with(field, value)

    assert getattr(queue, field) == expected


# --- ${ENV} interpolation -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "env", "field", "expected"),
    [
        ("connection_name: ${SERVICE}", {"SERVICE": "billing"}, "connection_name", "billing"),
        ("connection_name: ${SERVICE:-shop}", {}, "connection_name", "shop"),
        ("connection_name: ${SERVICE:-shop}", {"SERVICE": "billing"}, "connection_name", "billing"),
        ("connection_name: svc-${SERVICE}-${REGION:-eu}", {"SERVICE": "billing"}, "connection_name", "svc-billing-eu"),
        ("connection_name: cost$$center", {}, "connection_name", "cost$center"),
        ("connection_name: $${SERVICE}", {"SERVICE": "billing"}, "connection_name", "${SERVICE}"),
        ("connection_name: pa$word", {}, "connection_name", "pa$word"),  # a lone '$' is kept
        # Plain scalars get their YAML type after substitution...
        ("heartbeat: ${HEARTBEAT:-30}", {}, "heartbeat", 30),
        ("heartbeat: ${HEARTBEAT}", {"HEARTBEAT": "45"}, "heartbeat", 45),
        # ...quoted ones stay strings.
        ('connection_name: "${BUILD:-42}"', {}, "connection_name", "42"),
        ("connection_name: '${BUILD}'", {"BUILD": "7"}, "connection_name", "7"),
        ("url: ${BROKER:-amqp://rabbit/billing}", {}, "url", "amqp://rabbit/billing"),
    ],
)
def test_environment_variables_are_substituted(line: str, env: dict[str, str], field: str, expected: Any) -> None:
    config = load(f"broker:\n  {line}\n", env=env)

    value = getattr(config.broker, field)
    assert value == expected
    assert type(value) is type(expected)


def test_a_quoted_substitution_stays_a_string_where_an_integer_is_needed() -> None:
    config, diags = check_text('broker:\n  heartbeat: "${HEARTBEAT:-30}"\n', "app.yaml", env={})

    assert config is None
    assert [str(d) for d in diags.errors] == ["app.yaml:2:14: broker: heartbeat must be an integer, got '30'"]


def test_the_process_environment_is_used_when_no_env_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMQPTASKS_TEST_SERVICE", "billing")
    monkeypatch.delenv("AMQPTASKS_BROKER_URL", raising=False)

    config, diags = check_text("broker:\n  connection_name: ${AMQPTASKS_TEST_SERVICE}\n")

    assert not diags.items, shown(diags)
    assert config is not None
    assert config.broker.connection_name == "billing"


# --- include ------------------------------------------------------------------------------------------------------

INCLUDED = {
    "app.yaml": """\
    include:
      - exchanges.yaml
      - teams/billing.yaml
    topology:
      exchanges:
        - name: tasks
      queues:
        - name: default
          bindings:
            - exchange: tasks
              routing_key: default
    """,
    "exchanges.yaml": """\
    topology:
      exchanges:
        - name: events
          type: topic
    """,
    "teams/billing.yaml": """\
    include: shared.yaml
    topology:
      queues:
        - name: billing
          max_priority: 5
          bindings:
            - exchange: events
              routing_key: invoice.*
    """,
    # Relative to teams/billing.yaml, which includes it...
    "teams/shared.yaml": """\
    topology:
      queues:
        - name: billing.audit
    """,
    # ...not to the working directory or to app.yaml.
    "shared.yaml": """\
    topology:
      queues:
        - name: wrong-shared-yaml
    """,
}


def test_included_files_add_to_the_lists_and_resolve_paths_from_the_including_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given
    monkeypatch.chdir(tmp_path)
    write_files(tmp_path, INCLUDED)

    # When
    config, diags = check_file("app.yaml", env={})

    # Then: the including file's objects first, then each included file's, in order
    assert not diags.items, shown(diags)
    assert config is not None
    assert config.include == ("exchanges.yaml", "teams/billing.yaml")
    assert [e.name for e in config.topology.exchanges] == ["tasks", "events"]
    assert [q.name for q in config.topology.queues] == ["default", "billing", "billing.audit"]


def test_includes_do_not_depend_on_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_files(tmp_path, INCLUDED)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")

    config, diags = check_file("../app.yaml", env={})

    assert not diags.errors, shown(diags)
    assert config is not None
    assert [q.name for q in config.topology.queues] == ["default", "billing", "billing.audit"]


def test_field_locations_name_the_file_line_and_column_of_the_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write_files(tmp_path, INCLUDED)

    config, _ = check_file("app.yaml", env={})

    assert config is not None
    default, billing, audit = config.topology.queues
    assert default.where("name") == Location("app.yaml", 8, 13)
    assert default.bindings[0].where("routing_key") == Location("app.yaml", 11, 24)
    # Objects from an included file keep that file's name.
    assert billing.loc == Location("teams/billing.yaml", 4, 7)
    assert billing.where("max_priority") == Location("teams/billing.yaml", 5, 21)
    assert billing.bindings[0].where("exchange") == Location("teams/billing.yaml", 7, 21)
    assert audit.where("name") == Location("teams/shared.yaml", 3, 13)
    # A field that was not written points at its object.
    assert billing.where("message_ttl") == billing.loc


# --- the broker URL: --broker beats AMQPTASKS_BROKER_URL beats broker.url -----------------------------------------

YAML_URL = "broker:\n  url: amqp://yaml-host/billing\n"


@pytest.mark.parametrize(
    ("text", "env", "flag", "expected"),
    [
        (YAML_URL, {}, None, "amqp://yaml-host/billing"),
        (YAML_URL, {"AMQPTASKS_BROKER_URL": "amqp://env-host/"}, None, "amqp://env-host/"),
        (YAML_URL, {"AMQPTASKS_BROKER_URL": "amqp://env-host/"}, "amqp://flag-host/", "amqp://flag-host/"),
        (YAML_URL, {}, "amqp://flag-host/", "amqp://flag-host/"),
        (YAML_URL, {"AMQPTASKS_BROKER_URL": ""}, None, "amqp://yaml-host/billing"),  # set but empty: ignored
        ("topology: {}\n", {}, None, DEFAULT_URL),
        ("topology: {}\n", {"AMQPTASKS_BROKER_URL": "amqp://env-host/"}, None, "amqp://env-host/"),
    ],
    ids=["yaml", "env-beats-yaml", "flag-beats-env", "flag-beats-yaml", "empty-env", "default", "env-no-yaml"],
)
def test_broker_url_precedence(text: str, env: dict[str, str], flag: str | None, expected: str) -> None:
    config = load(text, env=env, broker_url=flag)

    assert config.broker.url == expected


def test_load_config_reads_the_process_environment_and_the_flag_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given
    monkeypatch.chdir(tmp_path)
    write_files(tmp_path, {"app.yaml": YAML_URL})
    monkeypatch.setenv("AMQPTASKS_BROKER_URL", "amqp://env-host/")

    # When / Then
    assert load_config("app.yaml").broker.url == "amqp://env-host/"
    assert load_config("app.yaml", broker_url="amqp://flag-host/").broker.url == "amqp://flag-host/"


def test_a_bad_url_from_the_flag_is_reported_against_the_flag() -> None:
    config, diags = check_text(YAML_URL, "app.yaml", broker_url="http://flag-host/", env={})

    assert config is None
    assert [str(d) for d in diags.errors] == [
        "--broker:1:1: broker: url: unsupported broker URL scheme 'http': expected amqp:// or amqps://"
    ]


# --- shapes -------------------------------------------------------------------------------------------------------


def test_a_single_string_where_a_list_is_expected_is_a_list_of_one() -> None:
    config = load(
        """\
        topology:
          queues:
            - name: billing
              bindings:
                - exchange: amq.topic
                  routing_keys: invoice.created
        """
    )

    assert config.topology.queues[0].bindings[0].routing_keys == ("invoice.created",)


def test_include_may_be_a_single_file_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_files(tmp_path, {"app.yaml": "include: more.yaml\n", "more.yaml": "topology:\n  queues: [{name: billing}]\n"})

    config, diags = check_file("app.yaml", env={})

    assert not diags.items, shown(diags)
    assert config is not None
    assert config.include == ("more.yaml",)
    assert [q.name for q in config.topology.queues] == ["billing"]


def test_dead_letter_is_auto_a_mapping_or_absent() -> None:
    config = load(
        """\
        topology:
          exchanges:
            - name: events
              type: topic
          queues:
            - name: orders
              dead_letter: auto
            - name: webhooks
              dead_letter:
                exchange: events
                routing_key: webhook.failed
            - name: failures
        """
    )

    orders, webhooks, failures = config.topology.queues
    assert orders.dead_letter == "auto"
    assert webhooks.dead_letter == DeadLetter(exchange="events", routing_key="webhook.failed")
    assert failures.dead_letter is None


@pytest.mark.parametrize(
    ("binding", "expected"),
    [
        ("{exchange: amq.topic, routing_key: a.b, routing_keys: [c.d, e.f]}", ("a.b", "c.d", "e.f")),
        ("{exchange: amq.topic, routing_key: a.b}", ("a.b",)),
        ("{exchange: amq.topic, routing_keys: [c.d, e.f]}", ("c.d", "e.f")),
        ("{exchange: amq.fanout}", ("",)),  # no key at all: the one empty key
    ],
)
def test_binding_keys_combine_routing_key_and_routing_keys(binding: str, expected: tuple[str, ...]) -> None:
    queue = queue_with("bindings", f"[{binding}]")

    assert queue.bindings[0].binding_keys() == expected


def test_free_form_arguments_are_plain_data() -> None:
    queue = queue_with("arguments", "{x-queue-mode: lazy, x-custom: [1, {a: true}]}")

    assert queue.arguments == {"x-queue-mode": "lazy", "x-custom": [1, {"a": True}]}


# --- load_config: exceptions and logging --------------------------------------------------------------------------


def test_load_config_raises_with_every_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AMQPTASKS_BROKER_URL", raising=False)
    write_files(tmp_path, {"app.yaml": "broker:\n  heartbeet: 30\n  conection_name: shop\n"})

    with pytest.raises(ConfigError) as raised:
        load_config("app.yaml")

    assert str(raised.value).splitlines() == [
        "app.yaml:2:3: broker: unknown key 'heartbeet' (did you mean 'heartbeat'?)",
        "app.yaml:3:3: broker: unknown key 'conection_name' (did you mean 'connection_name'?)",
    ]
    assert len(raised.value.diagnostics) == 2


def test_load_config_logs_warnings_and_returns_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AMQPTASKS_BROKER_URL", raising=False)
    write_files(tmp_path, {"app.yaml": "topology:\n  queues:\n    - name: scratch\n      exclusive: true\n"})

    with caplog.at_level(logging.WARNING, logger="amqptasks.config"):
        config = load_config("app.yaml")

    assert config.topology.queues[0].exclusive is True
    assert any(m.startswith("app.yaml:4:18: warning: queue 'scratch'") for m in caplog.messages), caplog.messages


# --- regressions: each of these was a bug found by this suite and fixed ----------------


def test_check_text_does_not_silently_ignore_include(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_files(tmp_path, {"queues.yaml": "topology:\n  queues:\n    - name: billing\n"})

    config, diags = check_text("include: queues.yaml\n", "app.yaml", env={})

    included = config is not None and [q.name for q in config.topology.queues] == ["billing"]
    explained = any("include" in d.message for d in diags.items)
    assert included or explained, shown(diags)


def test_a_file_included_from_two_places_is_not_a_duplicate_of_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write_files(
        tmp_path,
        {
            "app.yaml": "include: [billing.yaml, shipping.yaml]\n",
            "billing.yaml": "include: common.yaml\n",
            "shipping.yaml": "include: common.yaml\n",
            "common.yaml": "topology:\n  exchanges:\n    - name: events\n      type: topic\n",
        },
    )

    config, diags = check_file("app.yaml", env={})

    # Either merged once, or refused with a message that says why (not "declared twice (first at <itself>)").
    merged_once = config is not None and [e.name for e in config.topology.exchanges] == ["events"]
    explained = any("included" in d.message for d in diags.errors)
    assert merged_once or explained, shown(diags)


@pytest.mark.parametrize("text", ["---\n", "---\n# topology comes later\n"])
def test_a_document_marker_alone_is_an_empty_file(text: str) -> None:
    config, diags = check_text(text, "app.yaml", env={})

    assert not diags.items, shown(diags)
    assert config is not None
    assert config.topology == Topology()
