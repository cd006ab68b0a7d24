"""The handle a publish returns: the task's id and, with a result backend, its state and result."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from amqptasks.errors import AmqpTasksError
from amqptasks.results.exceptions import rebuild
from amqptasks.results.states import EXCEPTION_STATES, FAILURE, PENDING, READY_STATES, SUCCESS
from amqptasks.worker import request as request_context

if TYPE_CHECKING:
    from amqptasks.app import App
    from amqptasks.results.backend import ResultBackend

_DEADLOCK = (
    "get() inside a task: waiting for another task's result in a worker can deadlock (every slot waiting). "
    "Chain the tasks (a.s() | b.s()) or use a callback (link=) instead."
)


class _AppsBackend:
    """The default of ``AsyncResult(backend=)``: the backend of its app (None, given explicitly, means none)."""


_APPS_BACKEND: Any = _AppsBackend()


class AsyncResult:
    """A published task: ``id`` is its task id (AMQP correlation_id and ``id`` header).

    ``AsyncResult(id, app=app)`` (or ``app.AsyncResult(id)``) reads the app's result backend, as in Celery.
    Without a result backend (or with ``ignore_result``, ``backend=None``), only ``id`` is meaningful: ``get()``
    raises. ``parent`` is the previous task of a chain; ``children`` what the task published while it ran.
    """

    def __init__(
        self,
        id: str,
        task_name: str = "",
        *,
        app: App | None = None,
        backend: ResultBackend | None = _APPS_BACKEND,
        parent: AsyncResult | GroupResult | None = None,
    ) -> None:
        self.id = id
        self.task_name = task_name
        self.app = app
        if backend is _APPS_BACKEND:
            backend = app.result_backend if app is not None else None
        self.backend = backend
        self.parent = parent
        self._final: dict[str, Any] | None = None

    def __str__(self) -> str:
        return self.id

    def __repr__(self) -> str:
        return f"<AsyncResult {self.task_name}[{self.id}]>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncResult) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    # --- state -------------------------------------------------------------------------------------------

    def _meta(self) -> dict[str, Any] | None:
        if self._final is not None:
            return self._final
        meta = self.backend.peek(self.id) if self.backend is not None else None
        if meta is not None and meta.get("status") in READY_STATES:
            self._final = meta  # kept here: the process-wide record of states is bounded
        return meta

    @property
    def state(self) -> str:
        meta = self._meta()
        return str(meta["status"]) if meta else PENDING

    status = state

    def ready(self) -> bool:
        return self.state in READY_STATES

    def successful(self) -> bool:
        return self.state == SUCCESS

    def failed(self) -> bool:
        return self.state == FAILURE

    @property
    def info(self) -> Any:
        """The result, the exception, or the ``meta`` of a custom state (``update_state``)."""
        meta = self._meta()
        if meta is None:
            return None
        return self._value(meta)

    result = info

    @property
    def children(self) -> list[AsyncResult | GroupResult]:
        """The tasks, groups and chords this task published while it ran, and the next task of its chain and its
        ``link`` callbacks, as Celery records them. Known once the task's final state is (empty before)."""
        meta = self._meta()
        children = meta.get("children") if meta else None
        return [result_from_tuple(c, self.app, self.backend) for c in children or ()]

    def as_tuple(self) -> list[Any]:
        """Celery's serialized form: ``[[id, parent], None]`` (what a state's ``children`` holds)."""
        return [[self.id, self.parent.as_tuple() if self.parent is not None else None], None]

    @property
    def traceback(self) -> str | None:
        meta = self._meta()
        return meta.get("traceback") if meta else None

    @property
    def date_done(self) -> datetime | None:
        """When the task reached its final state (UTC), as in Celery."""
        meta = self._meta()
        value = meta.get("date_done") if meta else None
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value)
            except ValueError:
                return None
            return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
        return value if isinstance(value, datetime) else None

    def forget(self) -> None:
        self._final = None
        if self.backend is not None:
            self.backend.forget(self.id)

    def revoke(self, terminate: bool = False, *, timeout: float = 1.0) -> list[dict[str, Any]]:
        """Tell workers never to run this task (and to stop it if it runs, with *terminate*).

        A revoked task still queued or waiting in the delay tiers is acknowledged without running when it
        arrives. The revocation is stored on the broker (the ``amqptasks.revoked`` stream) for 3 hours, so
        workers started later honour it too. Returns the replies of the workers running now.
        """
        if self.app is None:
            raise RuntimeError(f"AsyncResult {self.id} has no app; use amqptasks.control.revoke(app, id)")
        from amqptasks import control

        return control.revoke(self.app, self.id, terminate, timeout=timeout)

    # --- waiting -----------------------------------------------------------------------------------------

    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.05,
        on_message: Callable[[dict[str, Any]], Any] | None = None,
    ) -> Any:
        """Wait for the result; raise the task's exception (``propagate``) or ``TimeoutError`` after *timeout*."""
        if request_context.current.get() is not None:
            warnings.warn(_DEADLOCK, RuntimeWarning, stacklevel=2)
        if self.backend is None:
            raise AmqpTasksError(
                f"task {self.task_name}[{self.id}] has no result to wait for: configure a result backend "
                "(YAML 'results: {backend: rpc://}') and do not publish it with ignore_result"
            )
        try:
            meta = self._final or self.backend.wait(self.id, timeout, interval, on_message)
        except TimeoutError:
            rpc = (
                " With rpc://, a result reaches only the process that published the task."
                if self.backend.uses_reply_to
                else ""
            )
            raise TimeoutError(
                f"task {self.task_name}[{self.id}]: no result within {timeout:g} s (is a worker consuming its "
                f"queue? did it publish to the same broker and vhost?).{rpc}"
            ) from None
        self._final = meta
        value = self._value(meta)
        if propagate and meta.get("status") in EXCEPTION_STATES and isinstance(value, BaseException):
            raise value
        return value

    #: Celery's alias of :meth:`get`.
    wait = get

    async def aget(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.05,
        on_message: Callable[[dict[str, Any]], Any] | None = None,
    ) -> Any:
        """asyncio twin of :meth:`get` (waits in a thread, so the event loop keeps running)."""
        return await asyncio.to_thread(self.get, timeout, propagate, interval, on_message)

    def _value(self, meta: dict[str, Any]) -> Any:
        if meta.get("status") in EXCEPTION_STATES:
            return rebuild(meta.get("result"), self._task_module(), meta.get("traceback"))
        return meta.get("result")

    def _task_module(self) -> str | None:
        task = self.app.tasks.get(self.task_name) if self.app is not None else None
        if task is not None:
            return str(task.fn.__module__)
        module, _, _ = self.task_name.rpartition(".")
        return module or None


class GroupResult:
    """The results of a group, in the group's order."""

    def __init__(
        self, id: str, results: Sequence[AsyncResult], *, parent: AsyncResult | GroupResult | None = None
    ) -> None:
        self.id = id
        self.results = list(results)
        self.parent = parent

    def __iter__(self) -> Iterator[AsyncResult]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, index: int) -> AsyncResult:
        return self.results[index]

    def __repr__(self) -> str:
        return f"<GroupResult {self.id} of {len(self.results)}>"

    def ready(self) -> bool:
        return all(r.ready() for r in self.results)

    def successful(self) -> bool:
        return all(r.successful() for r in self.results)

    def failed(self) -> bool:
        return any(r.failed() for r in self.results)

    def completed_count(self) -> int:
        return sum(r.successful() for r in self.results)

    def get(self, timeout: float | None = None, propagate: bool = True, interval: float = 0.05) -> list[Any]:
        """Every member's result, in order; *timeout* bounds the whole wait."""
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        values = []
        for r in self.results:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            values.append(r.get(timeout=remaining, propagate=propagate, interval=interval))
        return values

    def forget(self) -> None:
        for r in self.results:
            r.forget()

    def as_tuple(self) -> list[Any]:
        """Celery's serialized form: ``[[id, parent], [member, ...]]``."""
        return [[self.id, self.parent.as_tuple() if self.parent is not None else None],
                [r.as_tuple() for r in self.results]]  # fmt: skip

    def _backend(self) -> ResultBackend:
        backend = next((r.backend for r in self.results if r.backend is not None), None)
        if backend is None:
            raise AmqpTasksError(f"group {self.id} has no result backend to save to or delete from")
        return backend

    def save(self) -> GroupResult:
        """Keep this group's members under its id (redis://, as Celery's ``GroupResult.save()``): any process,
        ours or Celery's, can :meth:`restore` it by id."""
        self._backend().save_group(self.id, self.as_tuple())
        return self

    def delete(self) -> None:
        """Remove what :meth:`save` kept."""
        self._backend().delete_group(self.id)

    @classmethod
    def restore(cls, group_id: str, app: App) -> GroupResult | None:
        """A group saved by :meth:`save` or by Celery's ``GroupResult.save()``; None if none is kept."""
        backend = app.result_backend
        if backend is None:
            raise AmqpTasksError(
                "GroupResult.restore() needs a result backend (YAML 'results: {backend: redis://...}')"
            )
        saved = backend.restore_group(group_id)
        restored = result_from_tuple(saved, app, backend) if saved else None
        return restored if isinstance(restored, GroupResult) else None


def result_from_tuple(
    data: Any, app: App | None = None, backend: ResultBackend | None = None
) -> AsyncResult | GroupResult:
    """A result from its Celery tuple form (:meth:`AsyncResult.as_tuple`, :meth:`GroupResult.as_tuple`)."""
    if isinstance(data, str):
        return AsyncResult(data, app=app, backend=backend)
    node, members = data
    id, parent = node if isinstance(node, list | tuple) else (node, None)
    up = result_from_tuple(parent, app, backend) if parent else None
    if members is not None:
        results = [result_from_tuple(m, app, backend) for m in members]
        return GroupResult(str(id), [r for r in results if isinstance(r, AsyncResult)], parent=up)
    return AsyncResult(str(id), app=app, backend=backend, parent=up)
