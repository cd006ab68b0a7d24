"""Broken configuration files: every problem is reported where the user wrote it, as `file:line:col: message`.

Columns are 1-based and point at the offending value (or at the key, for unknown and duplicate keys, or at the
start of the object, for problems of the object as a whole). Pure: no broker.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from amqptasks.config import Diagnostics, check_file, check_text

SECRET = "hunter2"


def case(
    id: str,
    where: str,
    message: str,
    text: str,
    severity: str = "error",
    *,
    files: dict[str, str] | None = None,
    file: str = "app.yaml",
) -> Any:
    """One row of the table: *message* is expected at *where* ("line:col", or "line") of *file*.

    *text* is app.yaml; *files* are written next to it (included files).
    """
    line, _, col = where.partition(":")
    return pytest.param(
        textwrap.dedent(text), int(line), int(col) if col else None, message, severity, files or {}, file, id=id
    )


CASES = [
    # --- YAML itself -------------------------------------------------------------------------------------------
    case(
        "yaml-syntax-error",
        "2:21",  # the ':' after "amqp://rabbit"
        "YAML syntax error: a ':' YAML cannot read here: a value that contains ': ' needs quotes",
        """\
        broker:
          url: amqp://rabbit: 5672
        """,
    ),
    case(
        "tab-indentation",
        "2:1",
        "YAML syntax error: a tab character: YAML indents with spaces only",
        "topology:\n\tqueues: []\n",
    ),
    # PyYAML's "expected <block end>, but found '<block mapping start>'" becomes a sentence about indentation
    case(
        "indented-too-shallow",
        "5:6",
        "YAML syntax error: this line's indentation does not match the lines above",
        "topology:\n  queues:\n    - name: a\n      bindings: []\n     max_priority: 5\n",
    ),
    case(
        "unclosed-quote",
        "2:8",
        "YAML syntax error: a quote opened here is never closed",
        'broker:\n  url: "amqp://x\n  heartbeat: 30\n',
    ),
    case(
        "unclosed-bracket",
        "2:11",
        "YAML syntax error: a '[' opened here is never closed",
        "topology:\n  queues: [a, b\n",
    ),
    case(
        "duplicate-key",
        "5:7",
        "duplicate key 'max_priority' (first given at line 4)",
        """\
        topology:
          queues:
            - name: billing
              max_priority: 5
              max_priority: 10
        """,
    ),
    case(
        "top-level-not-a-mapping",
        "1:1",
        "the configuration must be a mapping",
        """\
        - name: tasks
          type: direct
        """,
    ),
    # --- unknown keys, with did-you-mean -----------------------------------------------------------------------
    case(
        "unknown-top-level-key",
        "1:1",
        "unknown top-level key 'topolgy' (did you mean 'topology'?)",
        """\
        topolgy:
          exchanges: []
        """,
    ),
    case(
        "unknown-broker-key",
        "2:3",
        "broker: unknown key 'heartbeet' (did you mean 'heartbeat'?)",
        """\
        broker:
          heartbeet: 30
        """,
    ),
    case(
        "unknown-tls-key",
        "4:5",
        "unknown key 'ca_fle' (did you mean 'ca_file'?)",
        """\
        broker:
          url: amqps://rabbit
          tls:
            ca_fle: ca.pem
        """,
    ),
    case(
        "unknown-exchange-key",
        "4:7",
        "exchange 'events': unknown key 'tpye' (did you mean 'type'?)",
        """\
        topology:
          exchanges:
            - name: events
              tpye: topic
        """,
    ),
    case(
        "unknown-queue-key",
        "4:7",
        "queue 'billing': unknown key 'max_prority' (did you mean 'max_priority'?)",
        """\
        topology:
          queues:
            - name: billing
              max_prority: 5
        """,
    ),
    case(
        "unknown-queue-binding-key",
        "8:11",
        "queue 'billing': binding: unknown key 'routing_kye' (did you mean 'routing_key'?)",
        """\
        topology:
          exchanges:
            - name: tasks
          queues:
            - name: billing
              bindings:
                - exchange: tasks
                  routing_kye: billing
        """,
    ),
    case(
        "unknown-top-level-binding-key",
        "9:7",
        "topology: binding: unknown key 'to_exchnage' (did you mean 'to_exchange'?)",
        """\
        topology:
          exchanges:
            - name: events
              type: topic
            - name: audit
              type: fanout
          bindings:
            - exchange: events
              to_exchnage: audit
        """,
    ),
    case(
        "unknown-dead-letter-key",
        "8:9",
        "queue 'billing': dead_letter: unknown key 'routing_kye' (did you mean 'routing_key'?)",
        """\
        topology:
          exchanges:
            - name: dlx
          queues:
            - name: billing
              dead_letter:
                exchange: dlx
                routing_kye: failed
        """,
    ),
    # --- wrong types ---------------------------------------------------------------------------------------------
    case(
        "string-for-int",
        "4:19",
        "queue 'billing': max_length must be an integer, got 'lots'",
        """\
        topology:
          queues:
            - name: billing
              max_length: lots
        """,
    ),
    case("list-for-mapping", "1:9", "broker: expected a mapping, got a list", "broker: [amqp://rabbit]\n"),
    case(
        "list-for-arguments-mapping",
        "4:18",
        "queue 'billing': arguments must be a mapping, got a list",
        """\
        topology:
          queues:
            - name: billing
              arguments: [x-max-length]
        """,
    ),
    case(
        "bool-for-int",
        "4:21",
        "queue 'billing': max_priority must be an integer, got True",
        """\
        topology:
          queues:
            - name: billing
              max_priority: true
        """,
    ),
    case(
        "int-for-string",
        "2:20",
        "broker: connection_name must be a string, got int 42",
        """\
        broker:
          connection_name: 42
        """,
    ),
    case(
        "int-for-name",
        "3:13",
        "topology: queue: name must be a string, got int 42",
        """\
        topology:
          queues:
            - name: 42
        """,
    ),
    case(
        "bad-duration-unit",
        "4:20",
        "queue 'billing': message_ttl must be an integer or a number with a unit (ms, s, m, h, d), got '30 parsecs'",
        """\
        topology:
          queues:
            - name: billing
              message_ttl: 30 parsecs
        """,
    ),
    # --- enum values, with did-you-mean --------------------------------------------------------------------------
    case(
        "exchange-type-typo",
        "4:13",
        (
            "exchange 'notifications': type must be 'direct' or 'topic' or 'fanout' or 'headers', got 'fanot' "
            "(did you mean 'fanout'?)"
        ),
        """\
        topology:
          exchanges:
            - name: notifications
              type: fanot
        """,
    ),
    case(
        "queue-type-typo",
        "4:13",
        "queue 'orders': type must be 'classic' or 'quorum' or 'stream', got 'quorom' (did you mean 'quorum'?)",
        """\
        topology:
          queues:
            - name: orders
              type: quorom
        """,
    ),
    case(
        "overflow-typo",
        "4:17",
        "got 'drop-heed' (did you mean 'drop-head'?)",
        """\
        topology:
          queues:
            - name: emails
              overflow: drop-heed
        """,
    ),
    case(
        "headers-match-typo",
        "9:18",
        "match must be 'all' or 'any' or 'all-with-x' or 'any-with-x', got 'al' (did you mean 'all'?)",
        """\
        topology:
          exchanges:
            - name: reports
              type: headers
          queues:
            - name: archive
              bindings:
                - exchange: reports
                  match: al
                  headers: {format: pdf}
        """,
    ),
    # --- required keys -------------------------------------------------------------------------------------------
    case(
        "missing-name",
        "3:7",
        "topology: queue: missing required key 'name'",
        """\
        topology:
          queues:
            - type: quorum
        """,
    ),
    case(
        "binding-missing-exchange",
        "5:11",
        "queue 'billing': binding: missing required key 'exchange'",
        """\
        topology:
          queues:
            - name: billing
              bindings:
                - routing_key: billing
        """,
    ),
    # --- names ---------------------------------------------------------------------------------------------------
    case(
        "duplicate-exchange",
        "4:13",
        "exchange 'tasks' is declared twice (first at app.yaml:3:7)",
        """\
        topology:
          exchanges:
            - name: tasks
            - name: tasks
              type: direct
        """,
    ),
    case(
        "duplicate-queue",
        "4:13",
        "queue 'billing' is declared twice (first at app.yaml:3:7)",
        """\
        topology:
          queues:
            - name: billing
            - name: billing
        """,
    ),
    case(
        "duplicate-exchange-across-include",
        "3:13",
        "exchange 'tasks' is declared twice (first at app.yaml:4:7)",
        """\
        include: teams/billing.yaml
        topology:
          exchanges:
            - name: tasks
        """,
        files={
            "teams/billing.yaml": """\
            topology:
              exchanges:
                - name: tasks
                  type: topic
            """
        },
        file="teams/billing.yaml",
    ),
    case(
        "duplicate-queue-across-include",
        "4:13",
        "queue 'billing' is declared twice (first at app.yaml:5:7)",
        """\
        include: [teams/billing.yaml]
        topology:
          queues:
            - name: default
            - name: billing
        """,
        files={
            "teams/billing.yaml": """\
            topology:
              queues:
                - name: invoices
                - name: billing
            """
        },
        file="teams/billing.yaml",
    ),
    case(
        "reserved-exchange-name",
        "3:13",
        "exchange 'amq.orders': names starting with 'amq.' are reserved by RabbitMQ",
        """\
        topology:
          exchanges:
            - name: amq.orders
        """,
    ),
    case(
        "reserved-queue-name",
        "3:13",
        "queue 'amq.gen-billing': names starting with 'amq.' are reserved by RabbitMQ",
        """\
        topology:
          queues:
            - name: amq.gen-billing
        """,
    ),
    case(
        "empty-queue-name",
        "3:13",
        "queue name must not be empty",
        """\
        topology:
          queues:
            - name: ""
        """,
    ),
    case(
        "empty-exchange-name",
        "3:13",
        "exchange name must not be empty",
        """\
        topology:
          exchanges:
            - name: ''
        """,
    ),
    # --- includes and the environment ----------------------------------------------------------------------------
    case(
        "include-missing",
        "1:10",
        "included file 'teams/billing.yaml' not found (paths are relative to app.yaml)",
        "include: teams/billing.yaml\n",
    ),
    case(
        "include-cycle",
        "1:10",
        "include cycle: 'app.yaml' includes itself again",
        "include: [common.yaml]\n",
        files={"common.yaml": "include: app.yaml\n"},
        file="common.yaml",
    ),
    case(
        "unset-environment-variable",
        "2:8",
        "environment variable 'BROKER_URL' is not set (set it, or write ${BROKER_URL:-default})",
        """\
        broker:
          url: ${BROKER_URL}
        """,
    ),
    # --- references ----------------------------------------------------------------------------------------------
    case(
        "binding-to-undeclared-exchange",
        "7:21",
        "queue 'billing': binding: exchange 'order' is not declared (did you mean 'orders'?)",
        """\
        topology:
          exchanges:
            - name: orders
          queues:
            - name: billing
              bindings:
                - exchange: order
                  routing_key: billing
        """,
    ),
    case(
        "binding-to-undeclared-queue",
        "8:14",
        "binding from 'orders': queue 'biling' is not declared (did you mean 'billing'?)",
        """\
        topology:
          exchanges:
            - name: orders
          queues:
            - name: billing
          bindings:
            - exchange: orders
              queue: biling
              routing_key: billing
        """,
    ),
    case(
        "binding-to-undeclared-destination-exchange",
        "9:20",
        "binding from 'events': exchange 'notification' is not declared (did you mean 'notifications'?)",
        """\
        topology:
          exchanges:
            - name: events
              type: topic
            - name: notifications
              type: fanout
          bindings:
            - exchange: events
              to_exchange: notification
              routing_key: order.shipped
        """,
    ),
    case(
        "binding-on-default-exchange",
        "5:21",
        "queue 'billing': binding: the default exchange cannot be bound",
        """\
        topology:
          queues:
            - name: billing
              bindings:
                - exchange: ""
                  routing_key: billing
        """,
    ),
    case(
        "alternate-exchange-undeclared",
        "5:27",
        "exchange 'events': exchange 'events.unroutd' is not declared (did you mean 'events.unrouted'?)",
        """\
        topology:
          exchanges:
            - name: events
              type: topic
              alternate_exchange: events.unroutd
            - name: events.unrouted
              type: fanout
        """,
    ),
    case(
        "dead-letter-exchange-undeclared",
        "5:19",
        "queue 'billing': dead_letter: exchange 'dlx' is not declared",
        """\
        topology:
          queues:
            - name: billing
              dead_letter:
                exchange: dlx
        """,
    ),
    case(
        "dead-letter-auto-collides-with-declared-dlq",
        "4:20",
        "queue 'billing': dead_letter: auto provisions queue 'billing.dlq', which is also declared at app.yaml:5:7",
        """\
        topology:
          queues:
            - name: billing
              dead_letter: auto
            - name: billing.dlq
        """,
    ),
    # --- what RabbitMQ would refuse ------------------------------------------------------------------------------
    case(
        "max-priority-on-quorum",  # plan and apply refuse it on RabbitMQ 3.x (tests/test_plan_apply.py)
        "5:21",
        "queue 'orders': max_priority: quorum queues take message priorities only from RabbitMQ 4.0",
        """\
        topology:
          queues:
            - name: orders
              type: quorum
              max_priority: 5
        """,
        "warning",
    ),
    case(
        "max-priority-zero",
        "4:21",
        "queue 'billing': max_priority must be between 1 and 255, got 0",
        """\
        topology:
          queues:
            - name: billing
              max_priority: 0
        """,
    ),
    case(
        "max-priority-256",
        "4:21",
        "queue 'billing': max_priority must be between 1 and 255, got 256",
        """\
        topology:
          queues:
            - name: billing
              max_priority: 256
        """,
    ),
    case(
        "delivery-limit-on-classic",
        "4:23",
        "queue 'billing': delivery_limit: delivery_limit needs a quorum queue (type: quorum)",
        """\
        topology:
          queues:
            - name: billing
              delivery_limit: 5
        """,
    ),
    case(
        "quorum-not-durable",
        "5:16",
        "queue 'orders': quorum queues are always durable",
        """\
        topology:
          queues:
            - name: orders
              type: quorum
              durable: false
        """,
    ),
    case(
        "quorum-exclusive",
        "5:18",
        "queue 'orders': exclusive: quorum queues cannot be exclusive",
        """\
        topology:
          queues:
            - name: orders
              type: quorum
              exclusive: true
        """,
    ),
    case(
        "quorum-auto-delete",
        "5:20",
        "queue 'orders': auto_delete: quorum queues cannot be auto-delete",
        """\
        topology:
          queues:
            - name: orders
              type: quorum
              auto_delete: true
        """,
    ),
    case(
        "stream-message-ttl",
        "5:20",
        "queue 'audit': message_ttl: streams have no message TTL",
        """\
        topology:
          queues:
            - name: audit
              type: stream
              message_ttl: 1h
        """,
    ),
    case(
        "stream-dead-letter",
        "5:20",
        "queue 'audit': dead_letter: streams do not dead-letter",
        """\
        topology:
          queues:
            - name: audit
              type: stream
              dead_letter: auto
        """,
    ),
    case(
        "stream-max-priority",
        "5:21",
        "queue 'audit': max_priority: streams have no message priorities",
        """\
        topology:
          queues:
            - name: audit
              type: stream
              max_priority: 5
        """,
    ),
    case(
        "x-argument-duplicates-typed-field",
        "5:18",
        "queue 'billing': arguments: 'x-max-priority' is set by 'max_priority'; use that key",
        """\
        topology:
          queues:
            - name: billing
              max_priority: 5
              arguments: {x-max-priority: 5}
        """,
    ),
    case(
        "top-level-binding-with-queue-and-to-exchange",
        "10:7",
        "binding from 'events': give exactly one destination, 'queue' or 'to_exchange'",
        """\
        topology:
          exchanges:
            - name: events
              type: topic
            - name: audit
              type: fanout
          queues:
            - name: billing
          bindings:
            - exchange: events
              queue: billing
              to_exchange: audit
              routing_key: order.*
        """,
    ),
    case(
        "top-level-binding-without-destination",
        "6:7",
        "binding from 'events': give exactly one destination, 'queue' or 'to_exchange'",
        """\
        topology:
          exchanges:
            - name: events
              type: topic
          bindings:
            - exchange: events
              routing_key: order.*
        """,
    ),
    case(
        "headers-match-on-topic-exchange",
        "10:20",
        "queue 'billing': binding: match/headers only work on a headers exchange; 'events' is topic",
        """\
        topology:
          exchanges:
            - name: events
              type: topic
          queues:
            - name: billing
              bindings:
                - exchange: events
                  routing_key: order.*
                  headers: {region: eu}
        """,
    ),
    # --- the broker section --------------------------------------------------------------------------------------
    case(
        "bad-broker-url-scheme",
        "2:8",
        "broker: url: unsupported broker URL scheme 'http': expected amqp:// or amqps://",
        f"""\
        broker:
          url: http://admin:{SECRET}@rabbit:15672/
        """,
    ),
    case(
        "bad-broker-url-port",
        "2:8",
        "invalid port '99999' (expected a number 1-65535)",
        f"""\
        broker:
          url: amqp://admin:{SECRET}@rabbit:99999/billing
        """,
    ),
    case(
        "bad-management-url",
        "2:19",
        "broker: management_url must start with http(s)://",
        """\
        broker:
          management_url: rabbit:15672
        """,
    ),
    case(
        "tls-cert-without-key",
        "4:5",
        "broker: tls: cert_file and key_file go together; give both or neither",
        """\
        broker:
          url: amqps://rabbit
          tls:
            cert_file: client.pem
        """,
    ),
    case(
        "negative-heartbeat",
        "2:14",
        "broker: heartbeat must be 0 (off) or a number of seconds",
        """\
        broker:
          heartbeat: -1
        """,
    ),
    case(
        "max-message-size-over-rabbitmq-limit",
        "2:21",
        "broker: max_message_size must be between 1 byte and 512MiB (RabbitMQ's own limit), not 1,073,741,824",
        """\
        broker:
          max_message_size: 1GiB
        """,
    ),
    case(
        "max-message-size-zero",
        "2:21",
        "broker: max_message_size must be between 1 byte and 512MiB",
        """\
        broker:
          max_message_size: 0
        """,
    ),
    # --- warnings: the file loads, but probably does not do what was meant ----------------------------------------
    case(
        "max-message-size-over-rabbitmq-default-warns",
        "2:21",
        "broker: max_message_size 268,435,456 is over RabbitMQ's default max_message_size (128MiB)",
        """\
        broker:
          max_message_size: 256MiB
        """,
        "warning",
    ),
    case(
        "max-priority-above-10-warns",
        "4:21",
        "queue 'billing': max_priority 11: RabbitMQ keeps a sub-queue per level; 10 or less is advised",
        """\
        topology:
          queues:
            - name: billing
              max_priority: 11
        """,
        "warning",
    ),
    case(
        "routing-key-on-fanout-warns",
        "9:24",
        "queue 'emails': binding: fanout exchange 'notifications' ignores routing keys; remove it",
        """\
        topology:
          exchanges:
            - name: notifications
              type: fanout
          queues:
            - name: emails
              bindings:
                - exchange: notifications
                  routing_key: emails
        """,
        "warning",
    ),
    case(
        "routing-key-on-headers-warns",
        "9:24",
        "queue 'archive': binding: headers exchange 'reports' ignores routing keys; remove it",
        """\
        topology:
          exchanges:
            - name: reports
              type: headers
          queues:
            - name: archive
              bindings:
                - exchange: reports
                  routing_key: pdf
                  match: any
                  headers: {format: pdf}
        """,
        "warning",
    ),
    case(
        "no-routing-key-on-direct-warns",
        "7:11",
        "queue 'billing': binding: no routing_key on direct exchange 'tasks'; only the empty key will match",
        """\
        topology:
          exchanges:
            - name: tasks
          queues:
            - name: billing
              bindings:
                - exchange: tasks
        """,
        "warning",
    ),
    case(
        "exclusive-classic-queue-warns",
        "4:18",
        "queue 'scratch': an exclusive queue lives only as long as the connection that declares it",
        """\
        topology:
          queues:
            - name: scratch
              exclusive: true
        """,
        "warning",
    ),
    case(
        "tls-verify-off-warns",
        "4:13",
        "broker: tls: certificate verification is OFF",
        """\
        broker:
          url: amqps://rabbit
          tls:
            verify: false
        """,
        "warning",
    ),
    case(
        "tls-on-plain-amqp-warns",
        "4:5",
        "broker: tls options are ignored for an amqp:// URL; use amqps://",
        """\
        broker:
          url: amqp://rabbit
          tls:
            ca_file: ca.pem
        """,
        "warning",
    ),
]


def write_files(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")


def shown(diags: Diagnostics) -> str:
    return "\n".join(str(d) for d in diags.items) or "(no diagnostics)"


@pytest.mark.parametrize(("text", "line", "col", "message", "severity", "files", "file"), CASES)
def test_problem_is_reported_at_its_line_and_column(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    text: str,
    line: int,
    col: int | None,
    message: str,
    severity: str,
    files: dict[str, str],
    file: str,
) -> None:
    # Given: the file, in the working directory, so that it is shown as the user named it
    monkeypatch.chdir(tmp_path)
    write_files(tmp_path, {"app.yaml": text, **files})

    # When
    config, diags = check_file(tmp_path / "app.yaml", env={})

    # Then
    where = f"{file}:{line}:{col}: " if col is not None else f"{file}:{line}:"
    if severity == "warning":
        where += "warning: "
    matching = [d for d in diags.items if str(d).startswith(where) and message in str(d)]
    assert matching, f"expected {where}...{message!r}; got:\n{shown(diags)}"
    assert all(d.severity == severity for d in matching)
    assert SECRET not in shown(diags)
    if severity == "error":
        assert config is None
    else:  # a warning alone does not stop the file from loading
        assert not diags.errors, shown(diags)
        assert config is not None


def test_table_has_enough_rows() -> None:
    assert len(CASES) >= 35


@pytest.mark.parametrize(
    "url",
    [
        f"http://admin:{SECRET}@rabbit/",
        f"amqp://admin:{SECRET}@rabbit:99999/billing",
        f"amqp://admin:{SECRET}@rabbit/billing#section",
        f"amqp://admin:{SECRET}/x@rabbit/billing",  # unencoded '/' in the password
        f"amqp://admin:{SECRET}@rabbit/a/b",
    ],
)
def test_broker_url_errors_never_show_the_password(url: str) -> None:
    config, diags = check_text(f"broker:\n  url: '{url}'\n", "app.yaml", env={})

    assert config is None
    assert [d.loc.line for d in diags.errors] == [2]
    assert SECRET not in shown(diags)


def test_every_error_of_a_file_is_reported_in_one_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given: five independent mistakes in five objects; a type error in one queue, a bad reference in another
    monkeypatch.chdir(tmp_path)
    write_files(
        tmp_path,
        {
            "app.yaml": """\
            topology:
              exchanges:
                - name: orders
                  type: fanot
                - name: billing
                  internal: maybe
              queues:
                - name: invoices
                  max_length: lots
                - name: refunds
                  bindings:
                    - exchange: payments
                      routing_key: refunds
                - name: shipping
                  type: quorum
                  exclusive: true
            """
        },
    )

    # When
    config, diags = check_file("app.yaml", env={})

    # Then: all five, in file order, and nothing else
    assert config is None
    assert [(str(d.loc), d.severity) for d in diags.items if d.severity == "warning"] == []
    expected = [
        ("app.yaml:4:13", "exchange 'orders': type must be"),
        ("app.yaml:6:17", "exchange 'billing': internal must be true or false, got 'maybe'"),
        ("app.yaml:9:19", "queue 'invoices': max_length must be an integer, got 'lots'"),
        ("app.yaml:12:21", "queue 'refunds': binding: exchange 'payments' is not declared"),
        ("app.yaml:16:18", "queue 'shipping': exclusive: quorum queues cannot be exclusive"),
    ]
    assert len(diags.errors) == len(expected), shown(diags)
    for diagnostic, (where, message) in zip(diags.errors, expected, strict=True):
        assert str(diagnostic).startswith(f"{where}: ")
        assert message in diagnostic.message


def test_a_reference_to_an_object_that_failed_to_convert_is_not_called_undeclared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given: exchange 'orders' has a typo in its type; a queue binds to it
    monkeypatch.chdir(tmp_path)
    write_files(
        tmp_path,
        {
            "app.yaml": """\
            topology:
              exchanges:
                - name: orders
                  type: fanot
              queues:
                - name: billing
                  bindings:
                    - exchange: orders
                      routing_key: billing
            """
        },
    )

    # When
    _, diags = check_file("app.yaml", env={})

    # Then: one error, about the typo; the binding is not blamed for it
    assert [str(d.loc) for d in diags.errors] == ["app.yaml:4:13"], shown(diags)


# --- regressions: each of these was a bug found by this suite and fixed ----------------


def check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> tuple[Any, Diagnostics]:
    monkeypatch.chdir(tmp_path)
    write_files(tmp_path, {"app.yaml": text})
    return check_file("app.yaml", env={})


@pytest.mark.parametrize("name", ["[billing, invoices]", "{billing: 1}"])
def test_a_list_or_mapping_as_name_is_a_type_error_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    config, diags = check(tmp_path, monkeypatch, f"topology:\n  queues:\n    - name: {name}\n")

    assert config is None
    assert any(str(d).startswith("app.yaml:3:13: ") and "name must be a string" in d.message for d in diags.errors)


def test_yaml_merge_key_is_reported_not_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = """\
    topology:
      queues:
        - &base {name: billing, max_length: 100}
        - <<: *base
          name: invoices
    """

    config, diags = check(tmp_path, monkeypatch, textwrap.dedent(text))

    assert config is None
    assert any(
        str(d).startswith("app.yaml:4:7: ") and "merge keys ('<<') are not supported" in str(d) for d in diags.items
    )


@pytest.mark.parametrize("value", ["!vault billing/name", "!!int lots", "2024-13-45"])
def test_a_value_yaml_cannot_construct_is_reported_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    config, diags = check(tmp_path, monkeypatch, f"broker:\n  connection_name: {value}\n")

    assert config is None
    assert any(str(d).startswith("app.yaml:2:20: ") for d in diags.errors), shown(diags)


@pytest.mark.parametrize(
    "text",
    [
        """\
        broker:
          heartbeat: often
        topology:
          queues:
            - name: orders
              type: quorum
              exclusive: true
        """,
        """\
        topology:
          queues:
            - name: orders
              type: quorum
              exclusive: true
          bindings:
            - exchange: amq.topic
              queue: orders
              routing_key: [[order.created]]
        """,
    ],
    ids=["type-error-in-broker", "type-error-in-top-level-binding"],
)
def test_an_error_in_an_unnamed_object_does_not_hide_the_other_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    # Given: a type error in an object without a name, and an unrelated rule violation in queue 'orders'
    # When
    config, diags = check(tmp_path, monkeypatch, textwrap.dedent(text))

    # Then: both are reported
    assert config is None
    assert len(diags.errors) == 2, shown(diags)
    assert any("quorum queues cannot be exclusive" in d.message for d in diags.errors), shown(diags)


def test_a_broken_exchange_does_not_hide_the_errors_of_a_queue_with_the_same_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = """\
    topology:
      exchanges:
        - name: orders
          type: fanot
      queues:
        - name: orders
          type: quorum
          exclusive: true
    """

    _, diags = check(tmp_path, monkeypatch, textwrap.dedent(text))

    assert [str(d.loc) for d in diags.errors] == ["app.yaml:4:13", "app.yaml:8:18"], shown(diags)


@pytest.mark.parametrize(
    ("queue_type", "field"),
    [("stream", "message_ttl"), ("stream", "max_length"), ("classic", "delivery_limit")],
)
def test_a_zero_for_an_unsupported_field_is_still_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, queue_type: str, field: str
) -> None:
    text = f"topology:\n  queues:\n    - name: audit\n      type: {queue_type}\n      {field}: 0\n"

    config, diags = check(tmp_path, monkeypatch, text)

    assert config is None
    assert any(str(d).startswith("app.yaml:5:") and f"{field}:" in d.message for d in diags.errors), shown(diags)


def test_an_unset_environment_variable_is_reported_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, diags = check(tmp_path, monkeypatch, "broker:\n  url: ${BROKER_URL}\n  heartbeat: ${HEARTBEAT}\n")

    assert [d.message.split(" (")[0] for d in diags.errors] == [
        "environment variable 'BROKER_URL' is not set",
        "environment variable 'HEARTBEAT' is not set",
    ], shown(diags)


def test_tls_messages_name_the_section_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = "broker:\n  url: amqps://rabbit\n  tls:\n    ca_fle: ca.pem\n    verify: maybe\n"

    _, diags = check(tmp_path, monkeypatch, text)

    assert [str(d) for d in diags.errors] == [
        "app.yaml:4:5: broker: tls: unknown key 'ca_fle' (did you mean 'ca_file'?)",
        "app.yaml:5:13: broker: tls: verify must be true or false, got 'maybe'",
    ]
