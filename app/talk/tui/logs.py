"""Log records shown in the TUI's alert bar while it draws on the terminal (not on stderr)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Literal

from textual.app import App

from .messages import Noticed


class LogToApp(logging.Handler):
    """Log records go to the alert bar while the TUI draws on the terminal."""

    def __init__(self, app: App[int]) -> None:
        super().__init__(logging.WARNING)
        self.app = app

    def emit(self, record: logging.LogRecord) -> None:
        severity: Literal["warning", "error"] = (
            "error" if record.levelno >= logging.ERROR else "warning"
        )
        self.app.post_message(Noticed(self.format(record), severity))


@contextlib.contextmanager
def logging_into(app: App[int]) -> Iterator[None]:
    """While the app runs, log to it instead of to stderr (the screen it draws on)."""
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers = [LogToApp(app)]
    try:
        yield
    finally:
        root.handlers = saved
