"""Cross-cutting worker behaviour as middleware: hooks around every message, no branches in the loop.

Hooks run in order; ``after_*`` hooks run in reverse (as in dramatiq). Every hook is a no-op here, may
be ``async``, and receives the :class:`Delivery` being processed. Users add their own with
``Worker(middleware=[...])`` or hook the same points through ``app.signals``.
"""

from __future__ import annotations

import inspect
import itertools
import logging
from collections.abc import Awaitable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from amqptasks.worker.delivery import Delivery

log = logging.getLogger("amqptasks.worker")


class Middleware:
    def after_receive(self, delivery: Delivery) -> Any:
        """The message decoded into a task message (before the expiry, eta and redelivery checks)."""

    def before_execute(self, delivery: Delivery) -> Any:
        """The task is about to run (after decoding and checks). May await (rate limits)."""

    def after_success(self, delivery: Delivery, result: Any) -> Any:
        """The task returned; its message is acknowledged after this."""

    def after_failure(self, delivery: Delivery, exc: BaseException) -> Any:
        """The task raised and will not be retried; its message is dead-lettered after this."""

    def before_retry(self, delivery: Delivery, exc: BaseException | None, countdown: float) -> Any:
        """The task will be retried; its retry message is not published yet. What this records cannot arrive
        after the retry's own outcome (the results middleware stores the RETRY state here)."""

    def after_retry(self, delivery: Delivery, exc: BaseException | None, countdown: float) -> Any:
        """A retry message was published (confirmed); the original is acknowledged after this."""

    def after_reject(self, delivery: Delivery, reason: str) -> Any:
        """The message was rejected without running (bad input) or by ``Reject``: ``delivery.settled`` is
        "reject" (dead-lettered) or "requeue" (``Reject(requeue=True)``)."""

    def after_skip(self, delivery: Delivery, state: str) -> Any:
        """The task will not run: ``state`` is "REVOKED" or "EXPIRED"; its message was acknowledged."""

    def after_process(self, delivery: Delivery) -> Any:
        """Always last, whatever happened."""


_HOOKS = tuple(name for name in vars(Middleware) if not name.startswith("_"))


class Hooks:
    """The hooks of a middleware list, resolved once: per hook, only the methods a middleware overrides.

    The per-message path then calls just those (most middleware implement two or three hooks), with no
    lookups and no calls to the base class's no-ops.
    """

    def __init__(self, middleware: Sequence[Middleware]) -> None:
        self._chains: dict[str, list[Any]] = {
            hook: [getattr(m, hook) for m in middleware if getattr(type(m), hook) is not getattr(Middleware, hook)]
            for hook in _HOOKS
        }

    async def run(self, hook: str, *args: Any, reverse: bool = False) -> None:
        """Run *hook* of every middleware. ``after_*`` hooks (``reverse=True``) report what already happened:
        one that raises is logged and the others still run, so a broken hook cannot change a message's fate."""
        pending = self.fire(hook, *args, reverse=reverse)
        if pending is not None:
            await pending

    def fire(self, hook: str, *args: Any, reverse: bool = False) -> Awaitable[None] | None:
        """:meth:`run` without a coroutine while every hook is synchronous (the per-message path): None when
        done, else an awaitable that finishes the chain from the first hook that returned one."""
        chain = self._chains[hook]
        methods = iter(reversed(chain) if reverse else chain)
        for method in methods:
            try:
                result = method(*args)
            except Exception:
                if not reverse:
                    raise
                log.exception("%s.%s failed (ignored)", type(method.__self__).__name__, hook)
                continue
            if result is not None and inspect.isawaitable(result):
                return self._finish(hook, result, method, methods, args, reverse)
        return None

    async def _finish(
        self, hook: str, first: Awaitable[Any], method: Any, rest: Iterator[Any], args: tuple[Any, ...], reverse: bool
    ) -> None:
        for current in itertools.chain([None], rest):
            try:
                if current is None:
                    await first
                else:
                    method = current
                    result = current(*args)
                    if result is not None and inspect.isawaitable(result):
                        await result
            except Exception:
                if not reverse:
                    raise
                log.exception("%s.%s failed (ignored)", type(method.__self__).__name__, hook)
