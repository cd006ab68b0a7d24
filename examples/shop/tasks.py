"""The example project's tasks: import this module as ``tasks:app`` to run them.

amqptasks worker -A tasks:app --profile orders      (from this directory)
amqptasks worker -A tasks:app --profile emails
"""

from __future__ import annotations

from pathlib import Path

from amqptasks import App

# The YAML sits next to this file, so the module imports from any working directory.
app = App.from_config(Path(__file__).with_name("shop.yaml"))


@app.task(name="orders.place")
def place_order(order_id: str, cents: int) -> dict[str, object]:
    """Routine work: the return value is the task's result (rpc:// brings it back to the caller)."""
    return {"order": order_id, "total": f"{cents / 100:.2f} EUR"}


@app.task(name="orders.refund")
def refund(order_id: str) -> str:
    return f"refunded {order_id}"


@app.task(name="emails.receipt")
def send_receipt(order: dict[str, object]) -> str:
    """The second step of a chain: it gets the first step's result as its first argument."""
    return f"receipt for {order['order']} ({order['total']}) mailed"


@app.task(name="emails.reminder")
def remind(customer: str) -> str:
    return f"reminded {customer}"


@app.task(name="orders.sync_inventory", autoretry_for=(ConnectionError,))
def sync_inventory(sku: str) -> None:
    """Always fails: retried twice through the broker's delay tiers (shop.yaml's tasks: section), then
    rejected, so RabbitMQ dead-letters it to orders.dlq, where `amqptasks dlq list orders` shows it."""
    raise ConnectionError(f"inventory down ({sku})")
