"""The tasks under test: an ordinary module, with its app built at import time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from amqptasks import App, Task

app = App.from_config(Path(__file__).with_name("app.yaml"))


class PaymentDown(Exception):
    """The payment provider did not answer."""


#: What the provider does in the tests (a real app would call it over the network).
PROVIDER = {"up": True}


@app.task
def total(amounts: list[int]) -> int:
    return sum(amounts)


@app.task(bind=True, max_retries=3)
def charge(self: Task[Any, Any], invoice: str, amount: int) -> str:
    if not PROVIDER["up"]:
        # Try again in 10 minutes; after 3 retries the invoice goes to invoices.dlq.
        self.retry(exc=PaymentDown(invoice), countdown=600)
    return f"charged {invoice}: {amount}"


@app.task
def remind(invoice: str) -> str:
    return f"reminded {invoice}"
