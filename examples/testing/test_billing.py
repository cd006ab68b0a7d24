"""Testing the billing tasks without a RabbitMQ (the amqptasks pytest plugin; see pytest.ini)."""

from __future__ import annotations

import billing
import pytest

from amqptasks import UnroutableError


def test_total_runs_eagerly() -> None:
    # apply(): here and now, in this thread, no broker at all.
    assert billing.total.apply(([10, 20, 12],)).get() == 42


def test_charge_through_the_worker(amqptasks_drain) -> None:
    result = billing.charge.delay("INV-1", 42)
    amqptasks_drain()  # the real worker code path, in this process
    assert result.get(timeout=1) == "charged INV-1: 42"


def test_failed_charge_ends_in_the_dead_letter_queue(amqptasks_drain, amqptasks_messages, monkeypatch) -> None:
    monkeypatch.setitem(billing.PROVIDER, "up", False)
    billing.charge.delay("INV-2", 5)
    # Three retries 10 minutes apart: the virtual clock jumps over the waits.
    with pytest.raises(billing.PaymentDown):
        amqptasks_drain(advance_time=True)
    (dead,) = amqptasks_messages("invoices.dlq")
    assert dead.task == "billing.charge"
    assert dead.headers["retries"] == 3
    assert dead.death_reason == "rejected"


def test_a_reminder_waits_for_its_countdown(amqptasks_app, amqptasks_drain) -> None:
    result = billing.remind.apply_async(("INV-3",), countdown=3 * 24 * 3600)
    amqptasks_drain()
    assert result.state == "PENDING"  # three days to go
    amqptasks_drain(advance_time=True)
    assert result.get(timeout=1) == "reminded INV-3"


def test_an_unknown_routing_key_is_refused(amqptasks_app) -> None:
    with pytest.raises(UnroutableError):
        billing.remind.apply_async(("INV-4",), routing_key="nowhere")


@pytest.mark.amqptasks_rabbitmq
def test_charge_on_both_brokers(amqptasks_app, amqptasks_drain, amqptasks_messages) -> None:
    # Runs twice: [memory], and [rabbitmq] on a real broker in a vhost of its own, with a real worker process.
    billing.charge.delay("INV-5", 7)
    assert [m.task for m in amqptasks_messages("invoices")] == ["billing.charge"]
    amqptasks_drain()
    assert amqptasks_messages("invoices") == []
