"""The task object ``@app.task`` returns: callable in-process, publishable with delay/apply_async."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Generic, NoReturn, ParamSpec, TypeVar

from amqptasks.errors import MaxRetriesExceeded, Retry
from amqptasks.tasks.einfo import ExceptionInfo
from amqptasks.tasks.options import TaskOptions
from amqptasks.tasks.signature import Signature
from amqptasks.worker import request as request_context
from amqptasks.worker.request import Request

if TYPE_CHECKING:
    from amqptasks.app import App
    from amqptasks.result import AsyncResult
    from amqptasks.tasks.eager import EagerResult

P = ParamSpec("P")
R = TypeVar("R")


class LimitedRetry(Retry):
    """Raised by :meth:`Task.retry`: carries the limit it checked, which its ``max_retries`` argument may set."""

    def __init__(self, exc: BaseException | None, countdown: float | None, max_retries: int | None) -> None:
        super().__init__(exc, countdown)
        self.max_retries = max_retries


#: The hooks a base class may define, with the arguments Celery (and the worker) passes them, after ``self``.
HOOKS: dict[str, tuple[str, ...]] = {
    "on_success": ("retval", "task_id", "args", "kwargs"),
    "on_failure": ("exc", "task_id", "args", "kwargs", "einfo"),
    "on_retry": ("exc", "task_id", "args", "kwargs", "einfo"),
    "after_return": ("status", "retval", "task_id", "args", "kwargs", "einfo"),
}


def check_hooks(cls: type, task: str) -> None:
    """Refuse, when the task is declared, a hook of base class *cls* that cannot be called as the worker will."""
    for hook, arguments in HOOKS.items():
        method = getattr(cls, hook, None)
        if method is None or method is getattr(Task, hook):
            continue
        try:
            signature = inspect.signature(method)
        except ValueError:  # no signature to inspect (a builtin): trust it
            continue
        try:
            signature.bind(None, *arguments)
        except TypeError as exc:
            given = ", ".join(str(p.replace(annotation=inspect.Parameter.empty)) for p in signature.parameters.values())
            raise TypeError(
                f"task {task!r}: {cls.__name__}.{hook}({given}) cannot be called as the worker calls it, "
                f"{hook}(self, {', '.join(arguments)}) (Celery's signature): {exc}"
            ) from None


class Task(Generic[P, R]):
    """A registered task. Subclass it and pass ``base=`` to add on_success/on_failure/on_retry/after_return."""

    def __init__(self, app: App, fn: Callable[..., R], options: TaskOptions) -> None:
        self.app = app
        self.fn = fn
        self.declared = options
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn
        signature = inspect.signature(fn)
        if options.bind:
            params = list(signature.parameters.values())
            if not params:
                raise TypeError(f"task {options.name!r} has bind=True, so its function needs a 'self' parameter")
            signature = signature.replace(parameters=params[1:])
        self._signature = signature
        # The usual call, positional arguments only, against plain parameters: a length check is exact and much
        # cheaper than Signature.bind, which then only checks the other calls.
        parameters = list(signature.parameters.values())
        plain = all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in parameters)
        required = sum(1 for p in parameters if p.default is inspect.Parameter.empty)
        self._positional_range = (required, len(parameters)) if plain else None
        check_hooks(type(self), options.name)

    @property
    def name(self) -> str:
        return self.declared.name

    @property
    def options(self) -> TaskOptions:
        """Effective options: the decorator's, overridden by the YAML ``tasks:`` section."""
        return self.app.task_options(self.name, self.declared)

    def __repr__(self) -> str:
        return f"<task {self.name}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function here and now, like calling it directly (``self.request.called_directly`` is true)."""
        if self.declared.bind:
            from amqptasks.tasks.eager import direct_request

            token = request_context.current.set(direct_request(self, args, kwargs))
            try:
                return self.fn(self, *args, **kwargs)
            finally:
                request_context.current.reset(token)
        return self.fn(*args, **kwargs)

    def apply(
        self, args: tuple[Any, ...] | list[Any] | None = None, kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> EagerResult:
        """Run the task here and now, in this thread, and return an :class:`~amqptasks.tasks.eager.EagerResult`
        (Celery's ``Task.apply``): ``self.request.is_eager`` is true, retries run again at once, and the
        exception is kept in the result unless ``throw=True``. Options: ``task_id``, ``retries``, ``throw``,
        ``headers``; the rest (``queue``, ``routing_key``...) only show in ``self.request.delivery_info``."""
        from amqptasks.tasks.eager import apply

        return apply(self, args, kwargs, **options)

    def run_callable(self) -> Callable[..., Any]:
        """What the worker calls with the message's arguments (``self`` already bound for bind=True)."""
        if self.declared.bind:
            return functools.partial(self.fn, self) if not inspect.iscoroutinefunction(self.fn) else self._bound_async
        return self.fn

    async def _bound_async(self, *args: Any, **kwargs: Any) -> Any:
        coroutine: Any = self.fn(self, *args, **kwargs)
        return await coroutine

    @property
    def request(self) -> Request:
        """The message that started the current run (inside a worker), like Celery's ``self.request``."""
        current = request_context.current.get()
        if current is None:
            raise RuntimeError(f"{self.name}: self.request exists only while the task runs in a worker")
        return current

    def retry(
        self, exc: BaseException | None = None, countdown: float | None = None, max_retries: int | None = None
    ) -> NoReturn:
        """Run this task again later (a new message through the broker-side delays, same task id).

        With no retries left, raises *exc* (or ``MaxRetriesExceeded``) so the message is dead-lettered.
        """
        limit = self.options.max_retries if max_retries is None else max_retries
        if self.request.called_directly:  # as Celery: nothing could run it again, so the error is raised
            if exc is not None:
                raise exc
            raise LimitedRetry(None, countdown, limit)
        if limit is not None and self.request.retries >= limit:
            if exc is not None:
                raise exc
            raise MaxRetriesExceeded(f"{self.name}[{self.request.id}]: {limit} retries used up")
        raise LimitedRetry(exc, countdown, limit)

    def update_state(self, task_id: str | None = None, state: str = "PROGRESS", meta: Any = None) -> None:
        """Report a custom state (e.g. PROGRESS with ``meta``) that ``get(on_message=...)`` receives."""
        from amqptasks.results.middleware import update_state

        update_state(self.app, task_id, state, meta)

    # Hooks a custom base class may override, with Celery's signatures (checked when the task is declared).
    def on_success(self, retval: Any, task_id: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        """The task returned *retval*."""

    def on_failure(
        self, exc: BaseException, task_id: str, args: tuple[Any, ...], kwargs: Mapping[str, Any], einfo: ExceptionInfo
    ) -> None:
        """The task raised *exc* and will not be retried (*einfo*: its formatted traceback, as in Celery)."""

    def on_retry(
        self, exc: BaseException | None, task_id: str, args: tuple[Any, ...], kwargs: Mapping[str, Any],
        einfo: ExceptionInfo,
    ) -> None:  # fmt: skip
        """The task will run again: *exc* is the exception given to ``retry()`` (or caught by autoretry_for)."""

    def after_return(
        self, status: str, retval: Any, task_id: str, args: tuple[Any, ...], kwargs: Mapping[str, Any],
        einfo: ExceptionInfo | None,
    ) -> None:  # fmt: skip
        """After on_success (status SUCCESS, *einfo* None) or on_failure (FAILURE, *retval* the exception)."""

    def check_arguments(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        """Raise TypeError as the function would, before anything is sent."""
        if not kwargs and self._positional_range is not None:
            low, high = self._positional_range
            if low <= len(args) <= high:
                return
        try:
            self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.name}(): {exc}") from None

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult:
        """Publish with default options; returns once the broker has confirmed the message."""
        return self.apply_async(args, kwargs)

    def apply_async(
        self, args: tuple[Any, ...] | list[Any] | None = None, kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> AsyncResult:
        args, kwargs = tuple(args or ()), dict(kwargs or {})
        self.check_arguments(args, kwargs)
        return self.app.publish_task(self.options, args, kwargs, options)

    async def adelay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult:
        """asyncio twin of :meth:`delay` (aio-pika, confirmed)."""
        return await self.aapply_async(args, kwargs)

    async def aapply_async(
        self, args: tuple[Any, ...] | list[Any] | None = None, kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> AsyncResult:
        args, kwargs = tuple(args or ()), dict(kwargs or {})
        self.check_arguments(args, kwargs)
        return await self.app.apublish_task(self.options, args, kwargs, options)

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A signature (partial call) of this task."""
        return Signature(self.name, args, kwargs, app=self.app)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable signature: later partial arguments (e.g. a parent's result) are ignored."""
        return Signature(self.name, args, kwargs, immutable=True, app=self.app)

    def signature(
        self, args: tuple[Any, ...] = (), kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> Signature:
        return Signature(self.name, args, kwargs, options, app=self.app)
