"""``einfo``: what a task's on_failure / on_retry / after_return hooks receive about an exception, as in Celery
(billiard's ``ExceptionInfo``: ``type``, ``exception``, ``tb``, ``traceback`` the formatted text, ``exc_info``)."""

from __future__ import annotations

import traceback as tb_module
from types import TracebackType


class ExceptionInfo:
    """An exception and its formatted traceback. ``str(einfo)`` is the traceback text, as in Celery."""

    def __init__(self, exception: BaseException, *, internal: bool = False, text: str | None = None) -> None:
        self.type: type[BaseException] = type(exception)
        self.exception = exception
        #: The traceback object (None when the exception came from another process, e.g. a pool child).
        self.tb: TracebackType | None = exception.__traceback__
        #: The formatted traceback: *text* when given (e.g. carried from a pool child), else formatted here.
        self.traceback: str = text if text is not None else "".join(tb_module.format_exception(exception))
        self.internal = internal

    @property
    def exc_info(self) -> tuple[type[BaseException], BaseException, TracebackType | None]:
        return self.type, self.exception, self.tb

    def __str__(self) -> str:
        return self.traceback

    def __repr__(self) -> str:
        return f"<ExceptionInfo: {self.exception!r}>"
