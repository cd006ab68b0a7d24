"""Testing tasks without a RabbitMQ: run an app on ``memory://`` and drive its worker from the test.

- :func:`drain` runs the app's tasks in this process through the real worker code path until nothing is ready
  (``advance_time=True``: until nothing is pending, jumping the virtual clock over countdowns, retries and TTLs);
- :func:`messages` shows what a queue holds (body, headers with ``x-death``, properties) without consuming it;
- :func:`advance` moves the broker's clock by hand; :func:`tick_beat` moves it while sending the beat entries
  that fall due on the way.

See docs/testing.md ("Testing your tasks"); the pytest plugin (``amqptasks.testing.plugin``) gives fixtures.
"""

from __future__ import annotations

from amqptasks.testing.beat import tick_beat
from amqptasks.testing.drain import DrainResult, drain, memory_broker
from amqptasks.testing.queues import QueuedMessage, advance, messages

__all__ = ["DrainResult", "QueuedMessage", "advance", "drain", "memory_broker", "messages", "tick_beat"]
