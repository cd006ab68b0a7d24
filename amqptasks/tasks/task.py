"""The task object ``@app.task`` returns: callable in-process, publishable with delay/apply_async."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from amqptasks.tasks.options import TaskOptions
from amqptasks.tasks.signature import Signature

if TYPE_CHECKING:
    from amqptasks.app import App
    from amqptasks.result import AsyncResult

P = ParamSpec("P")
R = TypeVar("R")


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
        """Run the function here and now, like calling it directly."""
        if self.declared.bind:
            return self.fn(self, *args, **kwargs)
        return self.fn(*args, **kwargs)

    def check_arguments(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        """Raise TypeError as the function would, before anything is sent."""
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
