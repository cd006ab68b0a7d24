"""Canvas helpers that run many calls in one message: ``xmap``, ``xstarmap``, ``chunks``, and the built-in tasks
every app has (the chord unlock, map and starmap)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from amqptasks.tasks.signature import Signature

if TYPE_CHECKING:
    from amqptasks.app import App
    from amqptasks.canvas import group

MAP = "amqptasks.map"
STARMAP = "amqptasks.starmap"

__all__ = ["MAP", "STARMAP", "chunks", "register_builtin_tasks", "xmap", "xstarmap"]


def xmap(task: Signature, items: Iterable[Any]) -> Signature:
    """One task message calling *task* once per item: ``[task(item) for item in items]``."""
    return Signature(MAP, (dict(task), list(items)), app=task._bound())


def xstarmap(task: Signature, items: Iterable[Iterable[Any]]) -> Signature:
    """One task message calling *task* once per argument tuple: ``[task(*args) for args in items]``."""
    return Signature(STARMAP, (dict(task), [list(i) for i in items]), app=task._bound())


def chunks(task: Signature, items: Iterable[Iterable[Any]], n: int) -> group:
    """*items* (argument tuples) split into starmaps of *n*, run as a group."""
    from amqptasks.canvas import group

    if n < 1:
        raise ValueError(f"chunks of {n}: the size must be at least 1")
    listed = [list(i) for i in items]
    return group(xstarmap(task, listed[i : i + n]) for i in range(0, len(listed), n))


def register_builtin_tasks(app: App) -> None:
    """Tasks every app has: the chord unlock, map and starmap."""
    from amqptasks.results.chord import register

    register(app)

    @app.task(name=MAP)
    def xmap_task(task: dict[str, Any], items: list[Any]) -> list[Any]:
        run = app.tasks[Signature.from_dict(task, app).task]
        return [run(item) for item in items]

    @app.task(name=STARMAP)
    def xstarmap_task(task: dict[str, Any], items: list[list[Any]]) -> list[Any]:
        run = app.tasks[Signature.from_dict(task, app).task]
        return [run(*args) for args in items]
