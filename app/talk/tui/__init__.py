"""The Textual TUI of `antiphon talk`. Imported lazily: the headless server never loads textual."""

from .app import TalkApp, make_app
from .controls import TalkControls
from .logs import logging_into

__all__ = ["TalkApp", "TalkControls", "logging_into", "make_app"]
