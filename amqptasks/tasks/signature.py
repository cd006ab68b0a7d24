"""Signatures: a task call as data (``add.s(2)``), JSON-serializable like Celery's.

A signature is a dict (``task``, ``args``, ``kwargs``, ``options``, ``subtask_type``, ``immutable``) so that
it travels in a message's ``callbacks``/``errbacks`` exactly as Celery's does, and rebuilds with
:meth:`Signature.from_dict`. Partial application: new positional arguments go *before* the stored ones
(``add.s(2).delay(8)`` runs ``add(8, 2)``); immutable signatures (``si``) ignore them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from amqptasks.app import App
    from amqptasks.result import AsyncResult


class Signature(dict[str, Any]):
    def __init__(
        self,
        task: str,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        *,
        immutable: bool = False,
        app: App | None = None,
    ) -> None:
        super().__init__(
            task=task,
            args=list(args),
            kwargs=dict(kwargs or {}),
            options=dict(options or {}),
            subtask_type=None,
            immutable=immutable,
            chord_size=None,
        )
        self._app = app

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], app: App | None = None) -> Signature:
        if not isinstance(data, Mapping) or not isinstance(data.get("task"), str):
            raise TypeError(f"not a signature (needs a 'task' name): {data!r}")
        return cls(
            data["task"],
            data.get("args") or (),
            data.get("kwargs"),
            data.get("options"),
            immutable=bool(data.get("immutable")),
            app=app,
        )

    @property
    def task(self) -> str:
        return str(self["task"])

    @property
    def args(self) -> tuple[Any, ...]:
        return tuple(self["args"])

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self["kwargs"])

    @property
    def options(self) -> dict[str, Any]:
        return dict(self["options"])

    @property
    def immutable(self) -> bool:
        return bool(self["immutable"])

    def clone(self, args: tuple[Any, ...] = (), kwargs: Mapping[str, Any] | None = None, **options: Any) -> Signature:
        """A copy with partial arguments applied (ignored when immutable) and options merged."""
        if self.immutable:
            args, kwargs = (), None
        return Signature(
            self.task,
            (*args, *self.args),
            {**self.kwargs, **(kwargs or {})},
            {**self.options, **options},
            immutable=self.immutable,
            app=self._app,
        )

    def set(self, **options: Any) -> Signature:
        """Set publish options (countdown, queue, priority...), in place like Celery; returns self."""
        self["options"] = {**self.options, **options}
        return self

    def _bound(self) -> App:
        if self._app is None:
            raise RuntimeError(f"signature {self.task!r} is not bound to an app; use Signature.from_dict(data, app)")
        return self._app

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the task in this process, with partial arguments applied."""
        full = self.clone(args, kwargs)
        return self._bound().tasks[self.task](*full.args, **full.kwargs)

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        return self.apply_async(args, kwargs)

    def apply_async(
        self, args: tuple[Any, ...] | None = None, kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> AsyncResult:
        full = self.clone(tuple(args or ()), kwargs, **options)
        return self._bound().send_task(full.task, full.args, full.kwargs, **full.options)

    def __or__(self, other: Any) -> Any:
        """``a.s(2, 2) | b.s(4)``: a chain (dict's ``|`` merge makes no sense for a signature)."""
        from amqptasks.canvas import chain

        return chain(self) | other

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        marker = "si" if self.immutable else "s"
        return f"{self.task}.{marker}({', '.join(parts)})"
