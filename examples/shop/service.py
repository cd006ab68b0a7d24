"""A service that publishes the example project's tasks: run it while the workers run.

    python service.py          (from this directory; the broker comes from shop.yaml or AMQPTASKS_BROKER_URL)

It only imports the task objects from tasks.py to call them: the functions run in the workers.
"""

from __future__ import annotations

import time

from tasks import app, place_order, refund, remind, send_receipt, sync_inventory


def main() -> None:
    # delay() returns once RabbitMQ confirmed the message. Each task goes to the 'shop' exchange with its
    # name as routing key; the bindings in shop.yaml put it in the 'orders' or 'emails' queue.
    for number in range(1, 4):
        result = place_order.delay(f"A-100{number}", 1999 * number)
        print(f"sent orders.place A-100{number} (id {result.id[:8]})")

    # A priority lets a refund overtake the routine orders still waiting in the queue.
    refund.apply_async(("A-1001",), priority=9)
    print("sent orders.refund A-1001 with priority 9: it overtakes orders still waiting")

    # get() waits for the result, which the worker sends straight back (rpc:// in shop.yaml).
    total = place_order.delay("A-2001", 4250).get(timeout=30)
    print(f"orders.place A-2001 returned {total} (fetched with get())")

    # A chain over two queues: the orders worker places the order, the emails worker mails the receipt.
    receipt = (place_order.s("A-2002", 1250) | send_receipt.s()).delay()
    print(f"chain orders.place | emails.receipt returned {receipt.get(timeout=30)!r}")

    # A countdown waits on the broker (in the delay tiers), not in a worker's memory.
    sent = time.monotonic()
    later = remind.apply_async(("ada@example.com",), countdown=2)
    print(f"emails.reminder with a 2 s countdown returned {later.get(timeout=30)!r} "
          f"after {time.monotonic() - sent:.1f} s")  # fmt: skip

    # A task that keeps failing: retried twice, then dead-lettered to orders.dlq.
    failing = sync_inventory.delay("SKU-42")
    try:
        failing.get(timeout=30)
    except ConnectionError as exc:
        print(f"orders.sync_inventory failed 3 times ({type(exc).__name__}); it waits in orders.dlq")
    app.close()


if __name__ == "__main__":
    main()
