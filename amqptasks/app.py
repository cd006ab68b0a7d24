"""The application: task registry, configuration, and the publishers that send tasks.

There is no global default app (a known trap in dramatiq); tasks belong to the App that declared them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, Literal, ParamSpec, TypeVar, overload

from amqptasks import errors
from amqptasks.broker import forks
from amqptasks.broker.connections import Connections
from amqptasks.broker.memory import broker_for, is_memory_url
from amqptasks.config.load import load_config, load_config_text, override_broker_url
from amqptasks.config.model import Config
from amqptasks.message.envelope import Envelope
from amqptasks.publish import batch as batching
from amqptasks.publish import deferred
from amqptasks.result import AsyncResult
from amqptasks.result import AsyncResult as _Result  # for annotations after App.AsyncResult (Celery's name)
from amqptasks.results.states import DIRECT_REPLY_TO
from amqptasks.signals import Signals
from amqptasks.tasks import lineage
from amqptasks.tasks.options import TaskOptions, check_declaration, matching_overrides
from amqptasks.tasks.sending import Prepared, SendSettings, prepare
from amqptasks.tasks.signature import Signature
from amqptasks.tasks.task import Task

if TYPE_CHECKING:
    from amqptasks.broker.drivers import AioPublisher, Publisher
    from amqptasks.results.backend import ResultBackend
    from amqptasks.topology.apply import ApplyResult
    from amqptasks.topology.plan import Plan

P = ParamSpec("P")
R = TypeVar("R")
log = logging.getLogger("amqptasks")


class App:
    def __init__(self, *, config: Config | str | Path | None = None, broker_url: str | None = None) -> None:
        if isinstance(config, Config):
            self.config = override_broker_url(config, broker_url, os.environ)
        elif config is not None:
            self.config = load_config(config, broker_url=broker_url)
        else:
            self.config = load_config_text("{}", "<App()>", broker_url=broker_url)
        self.tasks: dict[str, Task[Any, Any]] = {}
        #: The class ``@app.task`` builds when no ``base=`` is given (integrations such as Django's set their own).
        self.task_base: type[Task[Any, Any]] = Task
        self._lock = threading.Lock()
        #: The one owner of this app's broker connections in this process (publishers, the rpc reply channel).
        self.connections = Connections(self.config.broker)
        forks.on_fork_in_child(self._forget_inherited)
        self._provisioned = False
        self._priority_warned: set[str] = set()
        self._options_cache: dict[tuple[str, TaskOptions | None], TaskOptions] = {}
        self.signals = Signals()
        #: Each thread's open ``with app.batch():`` block (see amqptasks.publish.batch).
        self._batches = batching.Batches()
        self._backend: ResultBackend | Literal[False] | None = False  # False: not created yet
        from amqptasks.canvas import register_builtin_tasks

        register_builtin_tasks(self)

    @classmethod
    def from_config(cls, path: str | Path, *, broker_url: str | None = None) -> App:
        """An app configured by a YAML file (``AMQPTASKS_BROKER_URL`` / *broker_url* override its broker)."""
        return cls(config=path, broker_url=broker_url)

    # --- declaring tasks ---------------------------------------------------------------------------

    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...
    @overload
    def task(
        self, *, bind: Literal[True], **options: Any
    ) -> Callable[[Callable[Concatenate[Any, P], R]], Task[P, R]]: ...
    @overload
    def task(self, *, bind: Literal[False] = False, **options: Any) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(self, *fns: Callable[..., Any], bind: bool = False, **options: Any) -> Any:
        """Register a task: ``@app.task`` or ``@app.task(name=..., queue=..., max_retries=...)``."""
        if len(fns) > 1 or (fns and not callable(fns[0])):
            raise TypeError("use @app.task or @app.task(option=value, ...); options are keyword arguments")
        options["bind"] = bind

        def register(func: Callable[..., Any]) -> Task[Any, Any]:
            name = options.get("name") or f"{func.__module__}.{func.__qualname__}"
            check_declaration(options, f"@app.task for {name!r}")
            base: type[Task[Any, Any]] = options.pop("base", self.task_base)
            if not (isinstance(base, type) and issubclass(base, Task)):
                raise TypeError(f"@app.task for {name!r}: base must be a subclass of amqptasks.Task")
            declared = TaskOptions(**{**options, "name": name})
            if name in self.tasks:
                raise ValueError(f"task {name!r} is already registered (by {self.tasks[name].fn!r}); give name=")
            task = base(self, func, declared)
            self.tasks[name] = task
            return task

        return register(fns[0]) if fns else register

    def task_options(self, name: str, declared: TaskOptions | None = None) -> TaskOptions:
        """Effective options of task *name*: the YAML ``tasks:`` section over the declaration."""
        key = (name, declared)
        cached = self._options_cache.get(key)
        if cached is None:  # config and declarations are immutable: compute once per task
            entries = {pattern: s.given() for pattern, s in self.config.tasks.items()}
            cached = (declared or TaskOptions(name=name)).merged(matching_overrides(name, entries))
            self._options_cache[key] = cached
        return cached

    # --- publishing ---------------------------------------------------------------------------------

    @functools.cached_property
    def send_settings(self) -> SendSettings:
        """Computed once: the configuration does not change after the app is built."""
        return SendSettings(self.config.routes, self.config.delays.enabled, self.config.broker.max_message_size)

    def _prepare(
        self, options: TaskOptions, args: tuple[Any, ...], kwargs: Mapping[str, Any], call: Mapping[str, Any]
    ) -> Prepared:
        prepared = prepare(options, args, kwargs, call, self.send_settings, self.now() if self._memory else None)
        self._warn_priority(prepared)
        return prepared

    @property
    def result_backend(self) -> ResultBackend | None:
        """The backend the YAML ``results:`` section selects (None: no results), created on first use."""
        with self._lock:
            if self._backend is False:
                from amqptasks.results import backend_for

                self._backend = backend_for(self)
            return self._backend

    def _via_reply_to(self, options: TaskOptions, call: Mapping[str, Any]) -> tuple[bool, ResultBackend | None]:
        """Whether to publish on the rpc:// reply channel, and the backend the result reads."""
        backend = self.result_backend
        if backend is None or call.get("ignore_result", options.ignore_result):
            return False, None
        return backend.uses_reply_to and not call.get("reply_to"), backend

    def publish_task(
        self, options: TaskOptions, args: tuple[Any, ...], kwargs: Mapping[str, Any], call: Mapping[str, Any]
    ) -> AsyncResult:
        """``delay()``/``apply_async()``: returns once confirmed; on a running event loop it does not wait for the
        confirm there (see :mod:`amqptasks.publish.deferred`)."""
        batch = self._batches.current()
        loop = deferred.running_loop()  # under abatch() too: an rpc:// task is published as outside a block
        if loop is None:
            self._ensure_provisioned()  # first, so that a countdown starts when the message can leave
        call, rpc, backend = self._reply_route(options, call)
        prepared = self._prepare(options, args, kwargs, call)
        self.signals.before_publish.send(message=prepared.message, envelope=prepared.envelope)
        if batch is not None and not rpc:
            result = self._result(prepared, options, backend, call)
            batch.add(prepared.envelope, result, prepared.message)
            return result
        if loop is not None:
            send = functools.partial(self._send_blocking, prepared, rpc, call)
            deferred.defer(loop, lambda: self._send(prepared, rpc, call), send, prepared.envelope.describe())
        else:
            self._send_blocking(prepared, rpc, call)
        return self._result(prepared, options, backend, call)

    def _send_blocking(self, prepared: Prepared, rpc: bool, call: Mapping[str, Any]) -> None:
        """Publish from a thread (not a running loop's); returns once confirmed."""
        self._ensure_provisioned()
        if rpc:
            self._rpc_backend().publish(prepared.envelope)  # on the channel that consumes the replies
        else:
            self.publisher.publish(prepared.envelope, retry_policy=_retry_policy(call, self.config))
        self.signals.after_publish.send(message=prepared.message, envelope=prepared.envelope)

    async def apublish_task(
        self, options: TaskOptions, args: tuple[Any, ...], kwargs: Mapping[str, Any], call: Mapping[str, Any]
    ) -> AsyncResult:
        call, rpc, backend = self._reply_route(options, call)
        prepared = self._prepare(options, args, kwargs, call)
        self.signals.before_publish.send(message=prepared.message, envelope=prepared.envelope)
        batch = self._batches.current()
        if batch is not None and not rpc:  # under abatch(): handed over, its confirm collected at the block's end
            result = self._result(prepared, options, backend, call)
            batch.add(prepared.envelope, result, prepared.message)
            return result
        await self._send(prepared, rpc, call)
        return self._result(prepared, options, backend, call)

    def _reply_route(
        self, options: TaskOptions, call: Mapping[str, Any]
    ) -> tuple[Mapping[str, Any], bool, ResultBackend | None]:
        call = lineage.inherit(call)
        rpc, backend = self._via_reply_to(options, call)
        return ({**call, "reply_to": DIRECT_REPLY_TO} if rpc else call), rpc, backend

    async def _send(self, prepared: Prepared, rpc: bool, call: Mapping[str, Any]) -> None:
        """Publish on the running loop without blocking it; returns once confirmed."""
        if self._auto_provision and not self._provisioned:
            await asyncio.to_thread(self._ensure_provisioned)
        if rpc:
            await asyncio.to_thread(self._rpc_backend().publish, prepared.envelope)  # the reply channel's thread
        else:
            publisher = await self.aio_publisher()
            await publisher.publish(prepared.envelope, retry_policy=_retry_policy(call, self.config))
        self.signals.after_publish.send(message=prepared.message, envelope=prepared.envelope)

    def _rpc_backend(self) -> ResultBackend:
        backend = self.result_backend
        assert backend is not None  # _via_reply_to said rpc: there is one
        return backend

    def _result(
        self, prepared: Prepared, options: TaskOptions, backend: ResultBackend | None, call: Mapping[str, Any]
    ) -> AsyncResult:
        result = AsyncResult(prepared.message.id, options.name, app=self, backend=backend)
        return lineage.added(result, call.get("add_to_parent", True))

    def send_task(
        self, name: str, args: Iterable[Any] = (), kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> AsyncResult:
        """Publish task *name* without importing its function (no argument check is possible)."""
        declared = self.tasks[name].declared if name in self.tasks else None
        return self.publish_task(self.task_options(name, declared), tuple(args), dict(kwargs or {}), options)

    def signature(
        self, name: str, args: Iterable[Any] = (), kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> Signature:
        """Celery's ``app.signature(name, args, kwargs, **options)``: a signature of task *name*, bound to this app."""
        return Signature(name, tuple(args), kwargs, options, app=self)

    @contextlib.contextmanager
    def batch(self) -> Iterator[list[AsyncResult]]:
        """``with app.batch(): for x in xs: task.delay(x)``: every task published in the block is sent at once, and
        the block ends once all are confirmed, or raises one ``BatchPublishError`` saying which failed (with the
        results of the others). Yields the results, in order. See :mod:`amqptasks.publish.batch`."""
        if deferred.running_loop() is not None:
            raise RuntimeError("app.batch() blocks: on an event loop, use 'async with app.abatch():'")
        self._ensure_provisioned()
        batch, opened = self._batches.enter(self._new_batch)
        try:
            yield batch.results
        except BaseException as failure:
            if self._batches.leave(batch, opened):
                batching.settle(batch, failure)
            raise
        if self._batches.leave(batch, opened):
            batching.settle(batch, None)

    @contextlib.asynccontextmanager
    async def abatch(self) -> AsyncIterator[list[AsyncResult]]:
        """``async with app.abatch():`` -- :meth:`batch` for asyncio: ``delay()`` and ``adelay()`` in the block
        return at once; the block's end awaits every confirm without blocking the loop."""
        if self.config.topology.provision and not self._provisioned:
            await asyncio.to_thread(self._ensure_provisioned)
        batch, opened = self._batches.enter(self._new_batch)
        try:
            yield batch.results
        except BaseException as failure:
            if self._batches.leave(batch, opened):
                await asyncio.to_thread(batching.settle, batch, failure)
            raise
        if self._batches.leave(batch, opened):
            await asyncio.to_thread(batching.settle, batch, None)

    def _new_batch(self) -> batching.Batch:
        def confirmed(message: Any, envelope: Envelope) -> None:
            self.signals.after_publish.send(message=message, envelope=envelope)

        return batching.Batch(self.publisher, confirmed if self.signals.after_publish.receivers else None)

    def publish_many(self, signatures: Iterable[Signature], *, stream: bool = False) -> list[AsyncResult]:
        """Publish many signatures with pipelined confirms; each one confirmed, as with ``delay()``.

        By default every signature is checked and its message built before the first one is sent, so a bad one
        raises (``TypeError``, ``EncodeError``...; a note names its position) with nothing sent.

        ``stream=True`` sends each message as soon as it is built: the broker stores the first messages while the
        rest are prepared (faster for large batches, see bench/README.md), and a generator is consumed as it goes
        instead of being held whole. A bad signature then raises ``BatchInterrupted`` once the messages before it
        are settled: its ``position`` says where to resume, ``results`` holds the results of the messages sent,
        and ``__cause__`` is the original error.

        On a running event loop (in a coroutine) the batch is built here and sent from a thread without waiting for
        its confirms (see :mod:`amqptasks.publish.deferred`); ``stream`` makes no difference there.
        """
        loop = deferred.running_loop()
        results: list[AsyncResult] = []  # built with each message: streaming overlaps them with the broker's work
        envelopes = self._envelopes(signatures, results)
        if loop is not None:  # on an event loop: built here (a bad one raises here), sent by a thread, unwaited
            batch = list(envelopes)
            send = functools.partial(self._publish_many_now, batch)
            deferred.defer(loop, lambda: asyncio.to_thread(send), send, f"a batch of {len(batch)}")
            return results
        self._ensure_provisioned()
        if not stream:
            self.publisher.publish_many(list(envelopes))
            return results
        try:
            self.publisher.publish_many(envelopes)
        except errors.BatchInterrupted as interrupted:
            interrupted.results = results[: interrupted.position]
            raise
        return results

    def _many_backend(self) -> ResultBackend | None:
        """Where publish_many's results are read: rpc:// cannot bring them back (see below)."""
        backend = self.result_backend
        if backend is not None and backend.uses_reply_to:
            from amqptasks.results.rpc import Unreachable

            return Unreachable(
                "publish_many() does not publish on the rpc:// reply channel, so its results cannot come back: "
                "use delay()/apply_async() for results by rpc://, or a result store (results: {backend: redis://...})"
            )
        return backend

    def AsyncResult(self, id: str, task_name: str = "") -> AsyncResult:
        """Celery's ``app.AsyncResult(id)``: the result of task *id*, read from this app's result backend."""
        return AsyncResult(id, task_name, app=self)

    def _publish_many_now(self, envelopes: list[Envelope]) -> None:
        self._ensure_provisioned()
        self.publisher.publish_many(envelopes)

    def _envelopes(self, signatures: Iterable[Signature], results: list[_Result]) -> Iterator[Envelope]:
        """Build each signature's message as it is taken, and its result (bound to this app and its backend; none
        for a task that ignores its result) into *results*."""
        backend = self._many_backend()
        for position, sig in enumerate(signatures):
            try:
                task = self.tasks.get(sig.task)
                if task is not None:
                    task.check_arguments(sig.args, sig.kwargs)
                call = lineage.inherit(sig.options)
                options = self.task_options(sig.task, task.declared if task else None)
                prepared = self._prepare(options, sig.args, sig.kwargs, call)
            except Exception as exc:
                exc.add_note(f"publish_many: raised for signature #{position} (task {getattr(sig, 'task', '?')!r})")
                raise
            ignored = call.get("ignore_result", options.ignore_result)
            result = AsyncResult(prepared.message.id, sig.task, app=self, backend=None if ignored else backend)
            results.append(lineage.added(result, call.get("add_to_parent", True)))
            yield prepared.envelope

    def _warn_priority(self, prepared: Prepared) -> None:
        destination = prepared.destination
        if destination.priority is None or destination.queue is None:
            return
        queue = next((q for q in self.config.topology.queues if q.name == destination.queue), None)
        if queue is not None and queue.max_priority is None and queue.name not in self._priority_warned:
            self._priority_warned.add(queue.name)
            log.warning(
                "task %s is published with priority %s to queue %r, which has no max_priority: RabbitMQ "
                "ignores the priority (declare the queue with max_priority)",
                prepared.message.task,
                destination.priority,
                queue.name,
            )

    # --- connections --------------------------------------------------------------------------------

    @property
    def publisher(self) -> Publisher:
        """The blocking, thread-safe confirmed publisher (from :attr:`connections`)."""
        return self.connections.publisher()

    async def aio_publisher(self) -> AioPublisher:
        """The running event loop's confirmed publisher (from :attr:`connections`), connected once per loop."""
        return await self.connections.aio_publisher()

    def _forget_inherited(self) -> None:
        # A forked child: a lock another thread held at the fork stays held there for ever.
        self._lock = threading.Lock()

    def provision(self, *, prune: bool = False) -> tuple[Plan, ApplyResult]:
        """Declare the YAML topology on the broker (refusing conflicts); see ``amqptasks topology apply``."""
        from amqptasks.topology.live import provision

        result = provision(self.config, prune=prune)
        self._provisioned = True
        return result

    @property
    def _auto_provision(self) -> bool:
        # A memory:// broker starts empty in every process: it always gets the YAML's topology.
        return self.config.topology.provision or is_memory_url(self.config.broker.url)

    @functools.cached_property
    def _memory(self) -> bool:
        return is_memory_url(self.config.broker.url)

    def now(self) -> datetime:
        """The broker's time: the wall clock, or a memory:// broker's clock (which tests may move ahead): what a
        countdown, eta or expiry counts from, on both sides (publishing, and the worker's checks)."""
        if self._memory:
            return datetime.fromtimestamp(broker_for(self.config.broker.url).now(), UTC)
        return datetime.now(UTC)

    def _ensure_provisioned(self) -> None:
        if self._auto_provision and not self._provisioned:
            with self._lock:
                if not self._provisioned:
                    self.provision()

    def close(self) -> None:
        backend, self._backend = self._backend, False
        if backend:
            backend.close()
        self.connections.close()

    async def aclose(self) -> None:
        """Wait for the publishes still in flight on the running loop (``delay()`` called in a coroutine), then
        close its publisher (``close()`` closes the threads' connections)."""
        await deferred.drain()
        await self.connections.aclose()

    def __enter__(self) -> App:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _retry_policy(call: Mapping[str, Any], config: Config) -> Any:
    """The call's ``retry``/``retry_policy`` over the YAML's ``broker.publish_retry`` (over Celery's defaults)."""
    import dataclasses

    from amqptasks.broker.retry import configured, from_options

    defaults = dataclasses.asdict(configured(config.broker))
    return from_options(call.get("retry", True), {**defaults, **(call.get("retry_policy") or {})})
