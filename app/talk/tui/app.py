"""`antiphon talk` in the terminal: the inner monologue live, levels, status and controls.

The conversation (`session.run()`) is a worker in the app's own event loop; its events come
back as messages (messages.MessageBridge). The app keeps what it shows in reactive variables
(the latest frame figures, who speaks, the conversation's state, the temperatures asked for,
mute) whose `watch_` methods redraw the areas that show them, and turns keys into session
controls. Quitting cancels the conversation and waits for it (the recording is
closed, the torch thread idle) before the app exits; Textual restores the terminal, and what
the person should keep (notices, fatal errors, recordings made) is printed after exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import ClassVar, Literal

from rich.console import Group, RenderableType
from rich.text import Text
from rich.traceback import Traceback
from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.reactive import var
from textual.timer import Timer
from textual.widgets import Footer, Header
from textual.worker import Worker, WorkerCancelled, WorkerFailed, WorkerState

from app.core.events import CAUGHT_UP, CONDITIONS, FrameStats
from audio_io.errors import AudioError
from model import SamplingParams
from model.errors import AntiphonError

from .controls import TalkControls
from .help import HelpScreen
from .messages import (
    ErrorReported,
    MessageBridge,
    Noticed,
    SpeechChanged,
    StateChanged,
    StatsUpdated,
    TextArrived,
)
from .widgets import AlertBar, LevelMeter, StatusPanel, Transcript, clock_time

TEMPERATURE_STEP = 0.1
TEMPERATURE_MAX = 2.0

TEXT_T = Binding.Group("text temp")
AUDIO_T = Binding.Group("audio temp")


def plain(text: str) -> Text:
    """Text printed after exit as it is: no markup, and long paths left to the terminal to wrap."""
    return Text(text, no_wrap=True, overflow="ignore")


def side_state(own: bool, other: bool) -> Literal["speaking", "listening", "silent"]:
    return "speaking" if own else "listening" if other else "silent"


class TalkApp(App[int]):
    CSS_PATH = "antiphon.tcss"
    TITLE = "antiphon"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("m", "toggle_mute", "Mute", tooltip="mute / unmute the microphone"),
        Binding("r", "reset", "Reset", tooltip="reset the conversation (fresh model state)"),
        Binding("c", "toggle_recording", "Record", tooltip="start / stop recording a session"),
        Binding(
            "t",
            "text_temperature(-0.1)",
            "text T -",
            group=TEXT_T,
            tooltip="text temperature down (0.1, not below 0)",
        ),
        Binding(
            "T,shift+t",
            "text_temperature(0.1)",
            "text T +",
            key_display="T",
            group=TEXT_T,
            tooltip="text temperature up (0.1, at most 2)",
        ),
        Binding(
            "a",
            "audio_temperature(-0.1)",
            "audio T -",
            group=AUDIO_T,
            tooltip="audio temperature down (0.1, not below 0)",
        ),
        Binding(
            "A,shift+a",
            "audio_temperature(0.1)",
            "audio T +",
            key_display="A",
            group=AUDIO_T,
            tooltip="audio temperature up (0.1, at most 2)",
        ),
        Binding("question_mark", "help", "Help", tooltip="this help"),
        Binding("escape", "dismiss_alert", "Hide alert", show=False, tooltip="hide the alert"),
        Binding("q", "quit", "Quit", tooltip="quit (the recording is closed first)"),
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True, tooltip="quit too"),
    ]

    # What the screen shows; each change redraws its area (watch_*). Not initialised by
    # watchers (init=False): nothing is drawn before on_mount has composed the screen.
    stats: var[FrameStats | None] = var(None, init=False)  # the newest frame's figures
    state: var[str] = var("starting", init=False)  # starting, running, ended
    user_speaking: var[bool] = var(False, init=False)
    assistant_speaking: var[bool] = var(False, init=False)
    muted: var[bool] = var(False, init=False)
    # What the person asked for: the session applies it between two frames, so its own
    # `sampling` can lag behind two quick presses.
    sampling: var[SamplingParams] = var(SamplingParams, init=False)

    def __init__(self, session: TalkControls, record_dir: Path = Path("recordings")) -> None:
        super().__init__()
        self.session = session
        self.record_dir = record_dir
        self.set_reactive(TalkApp.sampling, session.sampling)
        self.set_reactive(TalkApp.muted, session.muted)
        self.notes: list[str] = []  # printed after exit
        self._bridge = MessageBridge(self)
        self._conversation: Worker[object] | None = None
        self._mounted = False
        self._shown = False  # the screen is there to draw on (from mount until detached)
        self._status_timer: Timer | None = None
        self._quitting = False
        self._recording: Path | None = None  # the folder being recorded, as last seen
        self._standing: Noticed | None = None  # the latest notice: back once a condition ends
        self._condition = ""  # the code of the condition the alert bar shows ("" for none)
        self._exit_code = 0

    def compose(self) -> ComposeResult:
        yield Header()
        yield AlertBar(id="alert")
        with Horizontal(id="main"):
            yield Transcript(id="transcript")
            with Vertical(id="side"):
                with Vertical(id="levels"):
                    yield LevelMeter("microphone", id="mic")
                    yield LevelMeter("assistant", id="assistant")
                yield StatusPanel(id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = self.session.model_name
        self.query_one(Transcript).border_title = "inner monologue"
        self.query_one("#levels").border_title = "levels"
        self.query_one(StatusPanel).border_title = "status"
        self._mounted = True
        for text in self.notes:  # notices given before the app ran
            self.post_message(Noticed(text))
        self.session.events.sinks.append(self._bridge)
        self._conversation = self.run_worker(
            self.session.run(), name="conversation", exit_on_error=False
        )
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            # `kill` and a closing tmux also end the conversation cleanly (Ctrl-C is a key here).
            asyncio.get_running_loop().add_signal_handler(
                signal.SIGTERM, lambda: self.call_next(self.action_quit)
            )
        self._shown = True
        # the conversation's time and the recording's duration run on between frames
        self._status_timer = self.set_interval(0.5, self._show_status)
        self._show_all()

    async def on_unmount(self) -> None:
        # Every way out (q, ctrl+q, an exit from elsewhere) waits for the conversation to stop.
        self._detach()
        await self._end_conversation()

    def _detach(self) -> None:
        self._shown = False  # nothing is drawn from here on: the screen may be gone
        if self._status_timer is not None:
            self._status_timer.stop()
        if self._bridge in self.session.events.sinks:
            self.session.events.sinks.remove(self._bridge)
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)

    def notice(self, text: str) -> None:
        """The session's `notices` callback: shown in the alert bar, printed after exit."""
        self.notes.append(text)
        if self._mounted:
            self.post_message(Noticed(text))

    # --- what the conversation reports -------------------------------------------------------

    @on(TextArrived)
    def _text(self, message: TextArrived) -> None:
        transcript = self.query_one(Transcript)
        if message.heard:
            transcript.add_heard(message.at, message.text)
        else:
            transcript.add_text(message.at, message.text)

    @on(SpeechChanged)
    def _speech(self, message: SpeechChanged) -> None:
        if message.side == "user":
            self.query_one(Transcript).user_speech(message.at, message.speaking)
        if message.side == "user":
            self.user_speaking = message.speaking
        else:
            self.assistant_speaking = message.speaking

    @on(StatsUpdated)
    def _stats(self, message: StatsUpdated) -> None:
        self.user_speaking = message.user_speaking
        self.assistant_speaking = message.assistant_speaking
        self.stats = message.stats

    @on(StateChanged)
    def _state(self, message: StateChanged) -> None:
        transcript = self.query_one(Transcript)
        if message.state == "started":
            self.state = "running"
        elif message.state == "stopped":
            self.state = "ended"
            transcript.note(message.at, "the conversation has ended (q quits)")
        elif message.state == "reset":
            transcript.note(message.at, "conversation reset: the model starts afresh")
        elif message.state in ("muted", "unmuted"):
            self.muted = message.state == "muted"
        elif message.state == CAUGHT_UP and self._condition:
            # The condition is over: its alert goes, and the notice it covered comes back.
            self._condition = ""
            transcript.note(message.at, message.detail)
            if self._standing is not None:
                self._noticed(self._standing)
            else:
                self.query_one(AlertBar).clear()

    @on(ErrorReported)
    def _error(self, message: ErrorReported) -> None:
        self.query_one(AlertBar).show_alert(
            message.message, message.hint, "error" if message.fatal else "warning"
        )
        self._condition = message.code if message.code in CONDITIONS else ""
        if message.fatal:
            self.notes.append(message.message + (f" ({message.hint})" if message.hint else ""))
            self._exit_code = 1

    @on(Noticed)
    def _noticed(self, message: Noticed) -> None:
        lines = message.text.splitlines()
        self.query_one(AlertBar).show_alert(" — ".join(lines), "", message.severity)
        self._standing, self._condition = message, ""

    @on(Worker.StateChanged)
    def _conversation_changed(self, event: Worker.StateChanged) -> None:
        worker = event.worker
        if worker is None or worker is not self._conversation:
            return
        if event.state == WorkerState.ERROR:
            error = worker.error
            assert error is not None
            expected = isinstance(error, AntiphonError | AudioError)
            failure: RenderableType = (
                plain(f"antiphon: {error}")
                if expected
                else Traceback.from_exception(type(error), error, error.__traceback__)
            )
            if self.notes:
                failure = Group(self._notes_text(), failure)
            self.exit(2 if expected else 1, return_code=2 if expected else 1, message=failure)
        elif event.state in (WorkerState.SUCCESS, WorkerState.CANCELLED) and not self._quitting:
            self.state = "ended"

    # --- keys ---------------------------------------------------------------------------------

    def action_toggle_mute(self) -> None:
        self.session.muted = not self.session.muted
        self._bridge.muted = self.muted = self.session.muted
        self.notify("microphone muted" if self.muted else "microphone on", timeout=2)

    def action_reset(self) -> None:
        if self.state != "running":
            self.notify("no conversation is running", severity="warning", timeout=3)
            return
        self.session.reset()
        self.notify("resetting the conversation", timeout=2)

    def action_toggle_recording(self) -> None:
        if self.session.recorder is not None:
            folder = self.session.stop_recording()
            if folder is not None:
                self.notify(f"recording saved in {folder}", timeout=4)
        elif self.state == "ended":
            self.notify("the conversation has ended", severity="warning", timeout=3)
        else:
            folder = self._new_recording_folder()
            try:
                self.session.start_recording(folder)
            except AntiphonError as exc:
                self.query_one(AlertBar).show_alert(
                    str(exc), "choose another folder with --record-dir", "error"
                )
            else:
                self.notify(f"recording to {folder}", timeout=3)
        self._show_status()  # the recording is the session's: no variable of the app

    def action_text_temperature(self, delta: float) -> None:
        self._change_temperature("text_temperature", delta)

    def action_audio_temperature(self, delta: float) -> None:
        self._change_temperature("audio_temperature", delta)

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_dismiss_alert(self) -> None:
        self.query_one(AlertBar).clear()
        self._condition = ""

    async def action_quit(self) -> None:
        self._quitting = True
        self._detach()  # what the conversation says while it stops is not shown any more
        await self._end_conversation()
        self._track_recording()  # the session closes its recording as it stops
        notes = self._notes_text() if self.notes else None
        self.exit(self._exit_code, return_code=self._exit_code, message=notes)

    # --- helpers ------------------------------------------------------------------------------

    async def _end_conversation(self) -> None:
        worker = self._conversation
        if worker is None or worker.state not in (WorkerState.PENDING, WorkerState.RUNNING):
            return
        if not worker.is_cancelled:  # a second cancel would interrupt the session's cleanup
            worker.cancel()
        if worker.state == WorkerState.RUNNING:
            with contextlib.suppress(WorkerCancelled, WorkerFailed):
                await worker.wait()

    def _change_temperature(self, field: str, delta: float) -> None:
        value = getattr(self.sampling, field) + delta
        value = round(min(TEMPERATURE_MAX, max(0.0, value)), 1)
        self.sampling = dataclasses.replace(self.sampling, **{field: value})
        self.session.set_sampling(self.sampling)

    def _new_recording_folder(self) -> Path:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        folder, n = self.record_dir / stamp, 1
        while folder.exists():
            n += 1
            folder = self.record_dir / f"{stamp}-{n}"
        return folder

    # --- drawing ------------------------------------------------------------------------------

    def watch_stats(self) -> None:
        self._show_all()

    def watch_user_speaking(self) -> None:
        self._show_levels()

    def watch_assistant_speaking(self) -> None:
        self._show_levels()

    def watch_muted(self) -> None:
        self._show_all()

    def watch_state(self) -> None:
        self._show_status()

    def watch_sampling(self) -> None:
        self._show_status()

    def _show_all(self) -> None:
        self._show_levels()
        self._show_status()

    def _show_levels(self) -> None:
        if not self._shown:
            return
        mic = self.query_one("#mic", LevelMeter)
        assistant = self.query_one("#assistant", LevelMeter)
        if self.stats is not None:
            mic.level_db = self.stats.input_level_db
            assistant.level_db = self.stats.output_level_db
        user, agent = self.user_speaking, self.assistant_speaking
        mic.state = "muted" if self.muted else side_state(user, agent)
        assistant.state = side_state(agent, user)

    def _notes_text(self) -> Text:
        return plain("\n".join(f"antiphon: {note}" for note in self.notes))

    def _track_recording(self) -> None:
        """Note each recording once it is closed, however it was started or stopped."""
        recorder = self.session.recorder
        folder = recorder.folder if recorder is not None else None
        if folder != self._recording and self._recording is not None:
            self.notes.append(f"recorded {self._recording}")
        self._recording = folder

    def _show_status(self) -> None:
        self._track_recording()
        if not self._shown:
            return
        status = self.query_one(StatusPanel)
        status.show_rows(list(self._status_rows()))
        recording = self.session.recorder is not None
        status.set_class(recording, "-recording")
        status.border_subtitle = "● rec" if recording else ""

    def _status_rows(self) -> Iterator[tuple[str, str]]:
        session, stats = self.session, self.stats
        yield "model", session.model_name
        yield "input", session.devices.get("input", "opening…")
        yield "output", session.devices.get("output", "opening…")
        yield "state", self.state + (" · muted" if self.muted else "")
        if stats is None:
            yield "compute", "–"
            yield "latency", "–"
        else:
            yield "time", f"{clock_time(stats.time)} · {stats.frame + 1} frames"
            yield "compute", f"{stats.compute_ms:.1f} ms/frame · RTF {stats.real_time_factor:.2f}"
            latency = stats.latency_ms
            yield "latency", "–" if latency is None else f"{latency:.0f} ms mic→speaker"
            yield "underruns", f"{stats.underruns} (speaker played silence)"
            yield "overruns", f"{stats.overruns} (reply audio dropped)"
            yield "xruns", f"{stats.xruns} (device)"
            yield "dropped", f"{stats.dropped_input} mic frames"
            yield "echo", echo_status(stats)
        text_t, audio_t = self.sampling.text_temperature, self.sampling.audio_temperature
        yield "temperature", f"text {text_t:.1f} · audio {audio_t:.1f}"
        recorder, started = session.recorder, session.recording_started
        if recorder is None:
            yield "recording", "off (c records)"
        else:
            duration = session.clock.now() - started if started is not None else 0.0
            yield "recording", f"{clock_time(duration)} (c stops)"
            yield "folder", str(recorder.folder)


def echo_status(stats: FrameStats) -> str:
    """The echo canceller's line: on or off, and how much echo the latest frame lost."""
    if not stats.echo_cancel:
        return "not cancelled"
    if stats.erle_db is None:
        return "cancelled · ERLE – (assistant silent)"
    return f"cancelled · ERLE {stats.erle_db:.0f} dB"


def make_app(session: TalkControls, record_dir: Path = Path("recordings")) -> TalkApp:
    """The TUI for one session: shared by `antiphon talk` and the tests."""
    return TalkApp(session, record_dir)
