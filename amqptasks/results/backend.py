"""What every result backend does: store a state (worker side) and wait for one (caller side).

States seen by this process are kept per task id (:class:`StateBook`), so that ``get(on_message=...)`` sees
every intermediate state in order and ``state``/``result`` can be read again after ``get()``.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from amqptasks.errors import AmqpTasksError
from amqptasks.results.states import READY_STATES

if TYPE_CHECKING:
    from amqptasks.message.envelope import Envelope

OnMessage = Callable[[dict[str, Any]], Any]
#: Reads states in the waiting thread for up to the seconds given (returning sooner once one came); False when
#: it cannot (another thread reads them and adds them to the book).
Pump = Callable[[float], bool]
#: The longest one pump() lasts before the waiting thread looks at the book again.
PUMP_S = 1.0
#: While another thread reads the states: how long to wait for it before trying to read them here.
OTHER_PUMP_S = 0.01


#: Final states a process keeps at most (the oldest go first). A process that publishes tasks and never reads
#: their results (a worker whose tasks publish tasks, a web app that fires and forgets) must not grow for ever;
#: an ``AsyncResult`` keeps the final state it has seen itself.
MAX_FINAL_STATES = 10_000


class StateBook:
    """The states received for each task id, with a condition to wait on (thread-safe)."""

    def __init__(self, max_final: int = MAX_FINAL_STATES) -> None:
        self._states: dict[str, list[dict[str, Any]]] = {}
        self._final: collections.OrderedDict[str, None] = collections.OrderedDict()  # ids with a final state
        self._max_final = max_final
        self.changed = threading.Condition()
        self._added = 0  # states added so far

    def add(self, meta: dict[str, Any]) -> None:
        with self.changed:
            task_id = str(meta.get("task_id"))
            states = self._states.setdefault(task_id, [])
            if states and states[-1].get("status") in READY_STATES and meta.get("status") not in READY_STATES:
                # A state arriving after the final one is stale (an older RETRY or PROGRESS overtaken by it).
                return
            states.append(meta)
            self._added += 1
            if meta.get("status") in READY_STATES:
                self._final[task_id] = None
                while len(self._final) > self._max_final:
                    oldest, _ = self._final.popitem(last=False)
                    self._states.pop(oldest, None)
            self.changed.notify_all()

    def history(self, task_id: str) -> list[dict[str, Any]]:
        with self.changed:
            return list(self._states.get(task_id, ()))

    def latest(self, task_id: str) -> dict[str, Any] | None:
        with self.changed:
            states = self._states.get(task_id)
            return states[-1] if states else None

    def settle(self, task_id: str) -> None:
        """Keep only the final state (the intermediate ones were delivered)."""
        with self.changed:
            states = self._states.get(task_id)
            if states and states[-1].get("status") in READY_STATES:
                del states[:-1]

    def forget(self, task_id: str) -> None:
        with self.changed:
            self._states.pop(task_id, None)
            self._final.pop(task_id, None)

    def wait(
        self, task_id: str, timeout: float | None, on_message: OnMessage | None, pump: Pump | None = None
    ) -> dict[str, Any]:
        """The final state of *task_id*; ``TimeoutError`` after *timeout* seconds. Calls *on_message* with
        every state, intermediate ones included, in the order they arrived. *pump*: reads the states in this
        thread when it can (see :data:`Pump`); otherwise they come from the thread that adds them."""
        deadline = None if timeout is None else time.monotonic() + timeout
        seen = 0
        with self.changed:
            while True:
                states = self._states.get(task_id, [])
                for meta in states[seen:]:
                    if on_message is not None:
                        on_message(meta)
                seen = len(states)
                if states and states[-1].get("status") in READY_STATES:
                    final = states[-1]
                    del states[:-1]
                    return final
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"task {task_id}: no result within {timeout:g} s")
                if pump is None:
                    self.changed.wait(remaining)
                    continue
                added = self._added
                self.changed.release()  # the states pump() reads are added from this thread or another
                try:
                    pumped = pump(PUMP_S if remaining is None else min(remaining, PUMP_S))
                finally:
                    self.changed.acquire()
                if not pumped and self._added == added:
                    # Another thread reads them: it notifies when it adds one (a short wait, then this thread
                    # tries again, for a state that arrived just as that thread let the connection go).
                    self.changed.wait(OTHER_PUMP_S if remaining is None else min(remaining, OTHER_PUMP_S))


class ResultBackend:
    """Base: ``uses_reply_to`` backends receive states on the publishing channel (rpc://)."""

    uses_reply_to = False
    url = ""
    #: Chords counted in the store itself, as Celery's redis backend counts them (:meth:`chord_part_return`):
    #: the member that completes a chord publishes its callback; no unlock task, no chord queue.
    counts_chords = False

    def save_group(self, group_id: str, result: list[Any]) -> None:
        """``GroupResult.save()``: keep a group's members (its Celery tuple form) under its id."""
        raise AmqpTasksError(f"the {self.url or 'configured'} results backend cannot save groups: use redis://")

    def restore_group(self, group_id: str) -> list[Any] | None:
        """The tuple form :meth:`save_group` kept (by either side), or None."""
        raise AmqpTasksError(f"the {self.url or 'configured'} results backend cannot restore groups: use redis://")

    def delete_group(self, group_id: str) -> None:
        raise AmqpTasksError(f"the {self.url or 'configured'} results backend cannot delete groups: use redis://")

    def set_chord_size(self, group_id: str, size: int) -> None:
        """``counts_chords`` only: the publisher records how many members a chord has, before publishing them."""
        raise NotImplementedError

    def chord_part_return(
        self, task_id: str, group_id: str, group_index: int | None, meta: dict[str, Any]
    ) -> list[tuple[str, str, Any]] | None:
        """``counts_chords`` only: record member *task_id*'s final state. ``(task id, status, result)`` of every
        member, in the group's order, to the one caller whose member completed the chord; ``[]`` to the others;
        None when the chord is not counted here (its size was never recorded)."""
        return None

    def publish(self, envelope: Envelope) -> None:
        """rpc:// only: publish a task on the channel its results come back to."""
        raise NotImplementedError

    def store(self, task_id: str, meta: dict[str, Any], reply_to: str | None) -> None:
        """Worker side, blocking: record a state of *task_id* (from a task's thread: ``update_state``)."""
        raise NotImplementedError

    async def astore(self, task_id: str, meta: dict[str, Any], reply_to: str | None) -> None:
        """Worker side, on the worker's event loop."""
        raise NotImplementedError

    def peek(self, task_id: str) -> dict[str, Any] | None:
        """The latest state known for *task_id*, without waiting."""
        raise NotImplementedError

    def wait(
        self, task_id: str, timeout: float | None, interval: float, on_message: OnMessage | None
    ) -> dict[str, Any]:
        raise NotImplementedError

    def forget(self, task_id: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release connections (the app closes its backend)."""
