"""Where a task is published: call options > YAML routes > decorator > default queue (pure)."""

from __future__ import annotations

import json
import re
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from amqptasks import App
from amqptasks.message.errors import EncodeError
from amqptasks.tasks.options import TaskOptions
from amqptasks.tasks.sending import SendSettings, prepare

ROUTES = """
topology:
  exchanges: [{name: tasks, type: topic}, {name: reports, type: headers}]
  queues: [{name: billing, max_priority: 10}, {name: emails}, {name: default}]
routes:
  - {task: billing.charge, queue: billing}
  - {task: "billing.*", exchange: tasks, routing_key: billing.other, priority: 2}
  - {regex: "^reports\\\\.(pdf|csv)$", exchange: reports}
"""


@pytest.fixture
def app(tmp_path: Path) -> App:
    path = tmp_path / "app.yaml"
    path.write_text(textwrap.dedent(ROUTES))
    return App.from_config(path, broker_url="amqp://guest:guest@127.0.0.1:1/%2F")


def destination(app: App, name: str, declared: dict[str, Any] | None = None, **call: Any) -> tuple[Any, ...]:
    options = app.task_options(name, TaskOptions(name=name, **(declared or {})))
    d = prepare(options, (), {}, call, app.send_settings).destination
    return (d.exchange, d.routing_key, d.queue, d.priority)


def test_exact_route_beats_a_later_glob(app: App) -> None:
    assert destination(app, "billing.charge") == ("", "billing", "billing", None)


def test_glob_route_gives_exchange_key_and_priority(app: App) -> None:
    assert destination(app, "billing.refund") == ("tasks", "billing.other", None, 2)


def test_regex_route_defaults_the_routing_key_to_the_task_name(app: App) -> None:
    assert destination(app, "reports.pdf") == ("reports", "reports.pdf", None, None)
    assert destination(app, "reports.xlsx") == ("", "default", "default", None)  # regex must match whole name


def test_yaml_route_beats_the_decorator(app: App) -> None:
    assert destination(app, "billing.charge", {"queue": "emails"}) == ("", "billing", "billing", None)


def test_decorator_applies_when_no_route_matches(app: App) -> None:
    assert destination(app, "emails.send", {"queue": "emails", "priority": 4}) == ("", "emails", "emails", 4)


def test_call_options_beat_everything(app: App) -> None:
    assert destination(app, "billing.charge", {"queue": "emails"}, queue="default") == ("", "default", "default", None)
    assert destination(app, "billing.refund", exchange="tasks", routing_key="x.y", priority=9) == (
        "tasks",
        "x.y",
        None,
        9,
    )


def test_call_routing_key_applies_to_the_routed_exchange(app: App) -> None:
    assert destination(app, "billing.refund", routing_key="billing.vip") == ("tasks", "billing.vip", None, 2)


def test_default_destination_is_the_default_queue(app: App) -> None:
    assert destination(app, "unrouted.task") == ("", "default", "default", None)


# --- the message a call produces -------------------------------------------------------------------------

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
PLAIN = TaskOptions(name="t.x")


def prepared(*args: Any, settings: SendSettings | None = None, **options: Any) -> Any:
    return prepare(PLAIN, args, {}, options, settings or SendSettings(), now=NOW)


def test_naive_eta_is_rejected_with_a_hint() -> None:
    with pytest.raises(ValueError, match="naive datetime; give a timezone-aware one"):
        prepared(eta=datetime(2030, 1, 1))


def test_countdown_and_eta_together_are_rejected() -> None:
    with pytest.raises(TypeError, match="countdown or eta, not both"):
        prepared(countdown=1, eta=NOW)


def test_countdown_without_delay_tiers_explains_how_to_enable_them() -> None:
    with pytest.raises(ValueError, match=re.escape("delays: {enabled: true}")):
        prepared(countdown=5)


def test_expires_in_seconds_becomes_an_absolute_header_and_no_amqp_expiration() -> None:
    envelope = prepared(expires=60).envelope
    assert envelope.headers["expires"] == (NOW + timedelta(seconds=60)).isoformat()
    assert envelope.expiration is None


def test_unknown_apply_option_is_a_type_error_with_a_hint() -> None:
    with pytest.raises(TypeError, match=r"unknown option 'countdwn' \(did you mean 'countdown'\?\)"):
        prepared(countdwn=3)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"routing_key": ["billing"]}, TypeError, "routing_key must be a string, got ['billing']"),
        ({"exchange": 5}, TypeError, "exchange must be a string, got 5"),
        ({"priority": 300}, ValueError, "priority must be an integer from 0 to 255, got 300"),
        ({"priority": "high"}, ValueError, "priority must be an integer from 0 to 255, got 'high'"),
    ],
)
def test_routing_options_of_the_wrong_type_are_refused_naming_the_option(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=re.escape(message)):
        prepared(**options)


def test_repeated_calls_with_other_routing_options_each_get_their_own_destination() -> None:
    settings = SendSettings()
    first = prepare(PLAIN, (), {}, {"routing_key": "a"}, settings, now=NOW)
    second = prepare(PLAIN, (), {}, {"routing_key": "b"}, settings, now=NOW)
    again = prepare(PLAIN, (), {}, {"routing_key": "a"}, settings, now=NOW)
    plain = prepare(PLAIN, (), {}, {}, settings, now=NOW)
    assert [p.envelope.routing_key for p in (first, second, again, plain)] == ["a", "b", "a", "default"]


def test_non_serializable_argument_is_named_at_publish_time() -> None:
    with pytest.raises(EncodeError, match=r"argument 2 \(object\) cannot be sent as json"):
        prepared(1, object())


def test_oversized_payload_is_refused_before_sending() -> None:
    with pytest.raises(EncodeError, match="over the limit of 1,024"):
        prepared("x" * 2000, settings=SendSettings(max_message_size=1024))


def test_celery_protocol_v2_headers_properties_and_body() -> None:
    link = {"task": "t.cb", "args": [], "kwargs": {}, "options": {}, "subtask_type": None, "immutable": False}
    p = prepared(1, "two", task_id="abc", headers={"tenant": "acme"}, link=link, priority=5)
    envelope = p.envelope
    assert envelope.correlation_id == "abc"
    assert envelope.content_type == "application/json"
    assert envelope.priority == 5
    headers = envelope.headers
    assert (headers["task"], headers["id"], headers["root_id"], headers["retries"]) == ("t.x", "abc", "abc", 0)
    assert headers["lang"] == "py" and headers["tenant"] == "acme"
    assert headers["argsrepr"] == "(1, 'two')"
    args, kwargs, embed = json.loads(envelope.body)
    assert (args, kwargs) == ([1, "two"], {})
    assert embed["callbacks"] == [link]


def test_compressed_body_is_marked_and_round_trips() -> None:
    from amqptasks.message.protocol import from_amqp

    envelope = prepared("y" * 5000, compression="zlib").envelope
    assert envelope.headers["compression"] == "application/x-gzip"
    assert len(envelope.body) < 200
    decoded = from_amqp(envelope.body, envelope.headers, content_type=envelope.content_type, content_encoding="utf-8")
    assert decoded.args == ("y" * 5000,)
