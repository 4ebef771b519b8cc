"""What the TUI needs from a conversation, and nothing more.

`app.talk.session.TalkSession` (a local model) and `app.talk.remote.RemoteTalkSession` satisfy
`TalkControls`, so the TUI never sees an engine, a model or a sound device. Controls are called
from the event loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from app.core.events import EventFanout
from model import SamplingParams


class Clock(Protocol):
    def now(self) -> float: ...


class Recording(Protocol):
    @property
    def folder(self) -> Path: ...


class TalkControls(Protocol):
    @property
    def model_name(self) -> str: ...

    @property
    def devices(self) -> Mapping[str, str]:
        """`input` and `output` device names, once `run()` has opened them."""
        ...

    @property
    def sampling(self) -> SamplingParams: ...

    @property
    def events(self) -> EventFanout:
        """The TUI appends its sink to `events.sinks` and removes it when it closes."""
        ...

    @property
    def clock(self) -> Clock: ...

    @property
    def recorder(self) -> Recording | None: ...

    @property
    def recording_started(self) -> float | None:
        """When the current recording started, on `clock`."""
        ...

    muted: bool

    def reset(self) -> None: ...

    def set_sampling(self, params: SamplingParams) -> None: ...

    def start_recording(self, folder: Path) -> None: ...

    def stop_recording(self) -> Path | None: ...

    async def run(self) -> object:
        """Converse until the source ends or the task is cancelled."""
        ...
