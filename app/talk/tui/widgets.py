"""The TUI's widgets: the transcript, the level meters, the status panel and the alert bar.

They only display; what to display is decided by the app (app/talk/tui/app.py). Colours live in
antiphon.tcss, reached through component classes where a widget renders several parts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import Label, Static

Who = Literal["user", "assistant", "note"]
WHO_LABEL = {"user": "you", "assistant": "assistant", "note": ""}


def clock_time(seconds: float) -> str:
    """Conversation time as m:ss.t"""
    minutes, rest = divmod(max(0.0, seconds), 60)
    return f"{int(minutes)}:{rest:04.1f}"


class Turn(Horizontal):
    """One block of the transcript: when it started, who, and what."""

    def __init__(self, at: float, who: Who, words: str = "") -> None:
        super().__init__(classes=f"turn {who}")
        self.at = at
        self.who = who
        self.words = words
        self.heard = ""  # a user's block: what the model wrote down of it
        self.spoke = ""  # a user's block: how long the level meter heard speech
        self._words = Static(words, classes="words", markup=False)

    def compose(self) -> ComposeResult:
        yield Label(clock_time(self.at), classes="at")
        yield Label(WHO_LABEL[self.who], classes="who")
        yield self._words

    def set_words(self, words: str) -> None:
        self.words = words
        self._words.update(words)


class Transcript(VerticalScroll):
    """The inner monologue as it comes, with the user's speech between the assistant's words.

    The assistant's text goes on in the same block until a pause of `PAUSE` seconds without
    text or a change of speaker; then a new block starts. The user's speech (from the
    microphone level: see messages.VoiceActivity) is a block of its own, with its duration and,
    from a model that writes down what it hears, the words it heard, in quotes.
    """

    PAUSE = 1.2  # seconds without text that end a block
    MAX_TURNS = 500  # older blocks are removed, so a long conversation stays light

    def __init__(self, id: str | None = None) -> None:
        super().__init__(id=id)
        self._text_turn: Turn | None = None
        self._user_turn: Turn | None = None
        self._heard_turn: Turn | None = None  # the user's latest block: heard words go there
        self._last_text_at = float("-inf")
        self._last_speaker: Who | None = None

    def on_mount(self) -> None:
        self.anchor()  # stay at the bottom as text comes, until the person scrolls up

    @property
    def turns(self) -> list[Turn]:
        return list(self.query(Turn))

    def _add(self, turn: Turn) -> Turn:
        self.mount(turn)
        turns = self.query(Turn)
        if len(turns) > self.MAX_TURNS:
            turns.first().remove()
        self._last_speaker = turn.who
        return turn

    def add_text(self, at: float, text: str) -> None:
        turn = self._text_turn
        paused = at - self._last_text_at >= self.PAUSE
        if turn is None or paused or self._last_speaker != "assistant":
            turn = self._text_turn = self._add(Turn(at, "assistant"))
            text = text.lstrip()
        turn.set_words(turn.words + text)
        self._last_text_at = at

    def user_speech(self, at: float, speaking: bool) -> None:
        if speaking:
            self._user_turn = self._heard_turn = self._add(Turn(at, "user", "speaking…"))
        elif self._user_turn is not None:
            self._user_turn.spoke = f"spoke for {at - self._user_turn.at:.1f} s"
            self._show_user(self._user_turn)
            self._user_turn = None

    def add_heard(self, at: float, text: str) -> None:
        """Words the model wrote down of what the user said: into the user's latest block, or
        a block of their own where the level meter found no speech since the assistant's."""
        turn = self._heard_turn
        if turn is None or self._last_speaker != "user" and turn is not self._user_turn:
            turn = self._heard_turn = self._add(Turn(at, "user"))
        turn.heard = (turn.heard + text) if turn.heard else text.lstrip()
        self._show_user(turn)

    @staticmethod
    def _show_user(turn: Turn) -> None:
        said = f"“{turn.heard}”" if turn.heard else ""
        turn.set_words("  ".join(part for part in (said, turn.spoke) if part) or "speaking…")

    def note(self, at: float, text: str) -> None:
        """A line of its own (a reset, the end of the conversation)."""
        self._add(Turn(at, "note", text))
        self._heard_turn = None


State = Literal["speaking", "listening", "silent", "muted"]


class LevelMeter(Widget):
    """One side's level (dBFS, -60 to 0 across the bar) and whether it speaks or listens."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "level-meter--label",
        "level-meter--bar",
        "level-meter--empty",
        "level-meter--speaking",
        "level-meter--listening",
        "level-meter--silent",
        "level-meter--muted",
    }
    FLOOR_DB = -60.0

    level_db: reactive[float] = reactive(-120.0)
    state: reactive[State] = reactive("silent")

    def __init__(self, label: str, id: str | None = None) -> None:
        super().__init__(id=id)
        self.label = label

    def render(self) -> Text:
        style = self.get_component_rich_style
        width = max(4, self.size.width - 8)
        fraction = min(1.0, max(0.0, (self.level_db - self.FLOOR_DB) / -self.FLOOR_DB))
        filled = round(fraction * width)
        heading = Text.assemble(
            (self.label, style("level-meter--label")),
            " ",
            (self.state, style(f"level-meter--{self.state}")),
        )
        bar = Text.assemble(
            ("█" * filled, style("level-meter--bar")),
            ("·" * (width - filled), style("level-meter--empty")),
            f" {max(self.level_db, -99.0):3.0f} dB",
        )
        return Text("\n").join([heading, bar])


class StatusPanel(Static):
    """Name / value rows: model, devices, timing, queue health, sampling, recording."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {"status-panel--name"}
    rows: Sequence[tuple[str, str]] = ()

    def show_rows(self, rows: Sequence[tuple[str, str]]) -> None:
        self.rows = rows
        grid = Table.grid(padding=(0, 1))
        grid.add_column(style=self.get_component_rich_style("status-panel--name"), no_wrap=True)
        grid.add_column(overflow="fold")
        for name, value in rows:
            grid.add_row(name, value)
        self.update(grid)


class AlertBar(Static):
    """The latest problem and what to do about it; hidden until there is one."""

    text = ""  # what the bar shows ("" while hidden)

    def show_alert(self, message: str, hint: str, severity: Literal["error", "warning"]) -> None:
        mark = "⚠ " if severity == "error" else "• "
        self.text = mark + message + (f" — {hint}" if hint else "")
        self.update(Text(self.text))
        self.set_class(severity == "error", "-error")
        self.set_class(severity == "warning", "-warning")
        self.add_class("-visible")

    def clear(self) -> None:
        self.text = ""
        self.remove_class("-visible")
