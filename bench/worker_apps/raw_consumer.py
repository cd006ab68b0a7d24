"""The broker's drain ceiling: a raw pika consumer that does nothing but count and multi-ack.

    python -m worker_apps.raw_consumer        # from bench/, with $BENCH_BROKER_URL and $BENCH_COUNT_DIR

Not a framework: no decoding, no task, no threads. Each delivery is counted with the same :func:`counter.tick`
as every framework's task, and every :data:`ACK_EVERY` deliveries one ``basic.ack(multiple=True)`` settles them
(the rest when the queue goes quiet). Whatever rate this drains at is what the broker can deliver and take acks
for on this machine, with one consumer and persistent messages; no worker can beat it.
"""

from __future__ import annotations

import os
import signal

import pika

from worker_apps.counter import tick

QUEUE = "bench"
PREFETCH = 1_000
ACK_EVERY = 100


def main() -> None:
    connection = pika.BlockingConnection(pika.URLParameters(os.environ["BENCH_BROKER_URL"]))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=PREFETCH)
    unacked = [0, 0]  # count since the last ack, last delivery tag

    def on_message(ch: object, method: pika.spec.Basic.Deliver, _props: object, _body: bytes) -> None:
        tick()
        unacked[0] += 1
        unacked[1] = method.delivery_tag
        if unacked[0] >= ACK_EVERY:
            channel.basic_ack(method.delivery_tag, multiple=True)
            unacked[0] = 0

    channel.basic_consume(QUEUE, on_message)
    stopping = [False]
    signal.signal(signal.SIGTERM, lambda *_: stopping.__setitem__(0, True))
    while not stopping[0]:
        connection.process_data_events(time_limit=0.05)
        if unacked[0]:  # quiet for a moment: settle what is left
            channel.basic_ack(unacked[1], multiple=True)
            unacked[0] = 0
    connection.close()


if __name__ == "__main__":
    main()
