"""The task class of Django projects: publishing after commit, and database connections handled per run."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, ParamSpec, TypeVar

from amqptasks.tasks.task import Task

P = ParamSpec("P")
R = TypeVar("R")


class DjangoTask(Task[P, R]):
    """A :class:`~amqptasks.Task` that knows Django's transactions and database connections."""

    def delay_on_commit(self, *args: P.args, **kwargs: P.kwargs) -> None:
        """:meth:`delay` once the current transaction commits; nothing is sent if it rolls back.

        Outside a transaction (autocommit) it publishes at once. Returns nothing: the message does not exist
        until the commit (as Celery's ``delay_on_commit``).
        """
        self.apply_async_on_commit(args, kwargs)

    def apply_async_on_commit(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        using: str | None = None,
        **options: Any,
    ) -> None:
        """:meth:`apply_async` once the transaction of database *using* commits (arguments checked now)."""
        from django.db import transaction

        call_args, call_kwargs = tuple(args or ()), dict(kwargs or {})
        self.check_arguments(call_args, call_kwargs)  # a wrong call fails in the view, not after the commit
        transaction.on_commit(lambda: self.apply_async(call_args, call_kwargs, **options), using=using)

    def run_callable(self) -> Callable[..., Any]:
        run = super().run_callable()
        if inspect.iscoroutinefunction(self.fn):
            return run  # async tasks use Django's async database support on their own terms

        @functools.wraps(run)
        def with_fresh_connections(*args: Any, **kwargs: Any) -> Any:
            # As Django does around a request, in the thread (or child process) that runs the task: a
            # connection past CONN_MAX_AGE or left broken by the previous task is closed, never reused.
            from django.db import close_old_connections

            close_old_connections()
            try:
                return run(*args, **kwargs)
            finally:
                close_old_connections()

        return with_fresh_connections
