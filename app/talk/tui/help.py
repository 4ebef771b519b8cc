"""The TUI's help screen: every key, and what each area of the screen shows."""

from __future__ import annotations

from typing import ClassVar

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

# What each area shows, for the help screen (docs/tui.md says the same).
AREAS = (
    (
        "inner monologue",
        "the assistant's text as the model generates it; a pause of 1.2 s or a change of "
        "speaker starts a new block; 'you' blocks are your speech (from the microphone level) "
        "with its duration",
    ),
    (
        "levels",
        "microphone and assistant levels (-60 to 0 dBFS); each side is speaking, listening "
        "(the other one speaks), silent, or muted",
    ),
    (
        "status",
        "model, sound devices, conversation time, compute per 80 ms frame and real-time factor "
        "(above 1: slower than real time), microphone-to-speaker latency, speaker underruns "
        "and overruns, microphone frames dropped, temperatures, recording folder and duration",
    ),
    ("alert bar", "the latest problem and what to do about it (escape hides it)"),
)


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,question_mark", "dismiss", "Close help"),
        Binding("q", "app.quit", "Quit"),  # a modal screen stops the app's own keys
    ]

    def compose(self) -> ComposeResult:
        keys = Table.grid(padding=(0, 2))
        keys.add_column(style="bold", no_wrap=True)
        keys.add_column()
        for binding in self.app.BINDINGS:  # the app's keys, as its footer shows them
            assert isinstance(binding, Binding)
            keys.add_row(self.app.get_key_display(binding), binding.tooltip or binding.description)
        areas = Table.grid(padding=(0, 2))
        areas.add_column(style="bold", no_wrap=True)
        areas.add_column()
        for name, what in AREAS:
            areas.add_row(name, what)
        with Vertical(id="help"):
            yield Static("Keys", classes="heading")
            yield Static(keys)
            yield Static("What you see", classes="heading")
            yield Static(areas)
            yield Static("escape or ? closes this help", classes="hint")
