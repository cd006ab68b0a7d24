"""amqptasks on the broker: a YAML topology provisioned (delay tiers, dead_letter: auto), delayed messages through
the tiers, retries as the worker makes them, a re-delay that still carries x-death, and a workflow of steps."""

from __future__ import annotations

import json
from typing import Any

from amqptasks.config.load import load_config_text
from amqptasks.delays.tiers import route
from amqptasks.message.envelope import Envelope
from amqptasks.tasks.options import TaskOptions
from amqptasks.tasks.sending import SendSettings, prepare
from amqptasks.topology.desired import desired
from tests.differential.driver import Driver
from tests.differential.table import scenario

_YAML = """
topology:
  exchanges:
    - {name: tasks, type: topic}
    - {name: results, type: fanout}
  queues:
    - name: work
      dead_letter: auto
      bindings: [{exchange: tasks, routing_key: "work.#"}]
    - name: reports
      bindings: [{exchange: tasks, routing_key: "reports.*"}]
    - name: done
      bindings: [{exchange: results}]
delays: {enabled: true}
"""


def _provision(d: Driver, text: str = _YAML) -> Any:
    config = load_config_text(text, "<differential>", broker_url="amqp://guest:guest@localhost/")
    want = desired(config.topology, config.delays)
    for decl in (*want.exchanges, *want.queues, *want.bindings):
        d.declare(decl)
    return config


def _delayed(
    d: Driver,
    delay_ms: float,
    body: str,
    *,
    exchange: str | None = None,
    queue: str | None = None,
    key: str = "",
    headers: dict[str, Any] | None = None,
) -> str:
    r = route(delay_ms, exchange=exchange, queue=queue, headers=headers or {})
    envelope = Envelope(r.exchange, key if exchange else str(queue), body.encode(), r.headers, mandatory=True)
    return d.publish_envelope(envelope)


def _no_delay_headers(seen: tuple[Any, ...]) -> tuple[Any, ...]:
    headers = {k: v for k, v in seen[1].items() if not k.startswith("amqptasks.d")}
    deaths = [(x["queue"], x["reason"], x["count"]) for x in headers.pop("x-death", [])]
    return (seen[0], headers, len(deaths), deaths[-1:] if deaths else None, *seen[2:])


@scenario
def provisioned_topology_routes_as_declared(d: Driver) -> Any:
    _provision(d)
    sent = [
        d.publish("tasks", "work.resize", "w", mandatory=True),
        d.publish("tasks", "reports.daily", "r", mandatory=True),
        d.publish("tasks", "nothing.here", "n", mandatory=True),
        d.publish("results", "", "x", mandatory=True),
    ]
    return sent, d.drain("work"), d.drain("reports"), d.drain("done"), d.count("amqptasks.unroutable")


@scenario
def delayed_message_reaches_its_exchange_after_the_delay(d: Driver) -> Any:
    _provision(d)
    # 600 ms: on a loaded machine the real broker's first look must still come well before it is due.
    sent = _delayed(d, 600, "later", exchange="tasks", key="work.resize", headers={"mine": "1"})
    d.elapse(0.05)
    early = d.count("work")
    d.elapse(0.6, until=lambda: d.count("work") == 1)
    got = d.get("work")
    assert got is not None
    return sent, early, _no_delay_headers(got.seen())


@scenario
def delayed_message_to_a_queue_by_name(d: Driver) -> Any:
    _provision(d)
    sent = _delayed(d, 40, "by-name", queue="reports")
    d.elapse(0.1, until=lambda: d.count("reports") == 1)
    got = d.get("reports")
    assert got is not None
    return sent, _no_delay_headers(got.seen())


@scenario
def delayed_message_nothing_routes_is_kept_as_unroutable(d: Driver) -> Any:
    _provision(d)
    sent = _delayed(d, 30, "orphan", exchange="tasks", key="nobody.listens")
    d.elapse(0.08, until=lambda: d.count("amqptasks.unroutable") == 1)
    got = d.get("amqptasks.unroutable")
    assert got is not None
    return sent, _no_delay_headers(got.seen()), d.publish("tasks", "nobody.listens", "now", mandatory=True)


def _task_envelope(config: Any, retries: int, countdown: float | None, task_id: str = "t-1") -> Envelope:
    settings = SendSettings(config.routes, config.delays.enabled, config.broker.max_message_size)
    options = TaskOptions(name="app.resize", exchange="tasks", routing_key="work.resize")
    call = {"task_id": task_id, "retries": retries, "countdown": countdown}
    return prepare(options, (1,), {}, call, settings).envelope


@scenario
def retries_go_through_the_tiers_then_dead_letter_to_the_dlq(d: Driver) -> Any:
    config = _provision(d)
    assert d.publish_envelope(_task_envelope(config, 0, None)) == "ack"
    runs = []
    for attempt in range(4):
        d.elapse(0.08 if attempt else 0.0, until=lambda: d.count("work") == 1)
        got = d.get("work")
        assert got is not None
        runs.append((got.headers["retries"], got.routing_key, got.exchange.startswith("amqptasks.delay")))
        if attempt < 3:  # as the worker does: a fresh message for the retry, confirmed before the ack
            assert d.publish_envelope(_task_envelope(config, attempt + 1, 0.04)) == "ack"
            d.ack(got.tag)
        else:
            d.reject(got.tag, requeue=False)
    d.arrived("work.dlq")
    dead = d.get("work.dlq")
    assert dead is not None
    deaths = [(x["queue"], x["reason"], x["count"]) for x in dead.headers["x-death"]]
    return runs, deaths[0], dead.headers["x-first-death-reason"], dead.routing_key, d.count("work")


@scenario
def re_delaying_a_message_that_keeps_its_x_death_drops_it(d: Driver) -> Any:
    # What Celery #9867 ran into: the tiers' x-death entries make the second trip a "cycle" RabbitMQ drops.
    _provision(d)
    _delayed(d, 20, "first-trip", queue="reports")
    d.elapse(0.06, until=lambda: d.count("reports") == 1)
    got = d.get("reports")
    assert got is not None
    tier_headers = dict(got.headers)
    bits = route(20, queue="reports").headers
    kept = {**tier_headers, **{k: v for k, v in bits.items() if k.startswith("amqptasks.")}}
    raw = Envelope(route(20, queue="reports").exchange, "reports", b"again-with-x-death", kept)
    fresh = route(20, queue="reports", headers=tier_headers)  # route() strips x-death
    sent = [d.publish_envelope(raw), d.publish_envelope(Envelope(fresh.exchange, "reports", b"fresh", fresh.headers))]
    d.ack(got.tag)
    d.elapse(0.06, until=lambda: d.count("reports") >= 1)
    d.elapse(0.05)
    return sent, d.bodies("reports"), d.count("amqptasks.unroutable")


@scenario
def workflow_steps_hand_results_on(d: Driver) -> Any:
    # A chain resize -> report -> done as workers run it: each step consumes, publishes the next, then acks.
    _provision(d)
    d.publish("tasks", "work.resize", json.dumps({"step": 1, "value": 2}), mandatory=True)
    for queue, next_exchange, next_key in (("work", "tasks", "reports.made"), ("reports", "results", "")):
        got = d.get(queue)
        assert got is not None
        data = json.loads(got.body)
        out = json.dumps({"step": data["step"] + 1, "value": data["value"] * 10})
        assert d.publish(next_exchange, next_key, out, mandatory=True) == "ack"
        d.ack(got.tag)
    return d.drain("done"), d.count("work"), d.count("reports")


@scenario
def plan_reports_the_same_conflicts_on_both_brokers(d: Driver) -> Any:
    # What `amqptasks topology plan` shows for a YAML that differs from what the vhost holds.
    from amqptasks.topology.plan import make_plan

    _provision(d)
    changed = _YAML.replace("dead_letter: auto", "dead_letter: auto\n      message_ttl: 60000", 1).replace(
        "{name: results, type: fanout}", "{name: results, type: topic}"
    )
    config = load_config_text(changed, "<differential>", broker_url="amqp://guest:guest@localhost/")
    plan = make_plan(desired(config.topology, config.delays), d.observed())
    return plan.summary(), [c.describe() for c in plan.conflicts]


@scenario
def unused_queue_expires(d: Driver) -> Any:
    d.queue("temp", arguments={"x-expires": 100})
    d.queue("kept")
    d.publish("", "temp", "held")  # publishing does not count as using it
    d.elapse(0.25, until=lambda: d.attempt(lambda: d.count("temp"))[0] == "refused")
    return d.attempt(lambda: d.count("temp")), d.count("kept")
