"""The TUI of `antiphon talk`: Textual's `run_test()` and `Pilot`, a snapshot, a real session.

Most tests drive the app with a scripted session (a `TalkControls` whose events the test emits);
one runs a real `TalkSession` on the random tiny model and a JACK dummy server. Assertions are on
what the screen shows, on the messages the app receives and on the controls it calls.
"""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import soundfile
import torch
from rich.console import Console
from textual.app import App
from textual.message import Message
from textual.pilot import Pilot

from app.core.engine import Engine
from app.core.events import (
    CAUGHT_UP,
    NODE_BEHIND,
    SLOWER_THAN_REAL_TIME,
    ErrorEvent,
    EventFanout,
    EventLog,
    FrameStats,
    HeardEvent,
    StateEvent,
    TextEvent,
    monologue_event,
)
from app.core.models import random_model
from app.core.recording import read_recording
from app.talk.session import TalkSession
from app.talk.tui import TalkApp, TalkControls, make_app
from app.talk.tui.help import HelpScreen
from app.talk.tui.messages import SpeechChanged, StatsUpdated, TextArrived, VoiceActivity
from app.talk.tui.widgets import AlertBar, LevelMeter, StatusPanel, Transcript
from audio_io.errors import AudioDeviceError
from model import SamplingParams
from tests.jack_server import JackServer, make_jack_fixture

jack_server = make_jack_fixture()
SIZE = (120, 36)
ROOT = Path(__file__).resolve().parents[3]


class FixedClock:
    def __init__(self, now: float = 100.0) -> None:
        self.time = now

    def now(self) -> float:
        return self.time


class FakeRecording:
    def __init__(self, folder: Path) -> None:
        self.folder = folder


class ScriptedSession:
    """A `TalkControls` that records the controls called; the test emits its events."""

    model_name = "scripted model"

    def __init__(self, fail_with: BaseException | None = None) -> None:
        self.devices: dict[str, str] = {}
        self.sampling = SamplingParams()
        self.events = EventFanout()
        self.clock = FixedClock()
        self.recorder: FakeRecording | None = None
        self.recording_started: float | None = None
        self.muted = False
        self.calls: list[str] = []
        self.sampling_requests: list[SamplingParams] = []
        self.fail_with = fail_with
        self.running = False

    def emit(self, *events: object) -> None:
        for event in events:
            self.events.emit(event)  # type: ignore[arg-type]

    def reset(self) -> None:
        self.calls.append("reset")

    def set_sampling(self, params: SamplingParams) -> None:
        self.sampling_requests.append(params)

    def start_recording(self, folder: Path) -> None:
        self.calls.append(f"start_recording {folder}")
        self.recorder, self.recording_started = FakeRecording(folder), self.clock.now()

    def stop_recording(self) -> Path | None:
        recorder, self.recorder, self.recording_started = self.recorder, None, None
        self.calls.append("stop_recording")
        return recorder.folder if recorder else None

    async def run(self) -> object:
        self.devices.update(input="scripted microphone", output="scripted speaker")
        if self.fail_with is not None:
            raise self.fail_with
        self.running = True
        self.emit(StateEvent(0.0, 0, "started"))
        try:
            await asyncio.Event().wait()  # until cancelled
        finally:
            await asyncio.sleep(0.05)  # like a step finishing in the torch thread
            self.running = False
            self.emit(StateEvent(9.9, 0, "stopped"))
        return None


def _satisfies(session: TalkControls) -> TalkControls:  # mypy checks both sessions here
    return session


_satisfies(ScriptedSession())


def frame(i: float, mic_db: float = -90.0, out_db: float = -90.0, **figures: float) -> FrameStats:
    values = {"compute_ms": 12.5, "real_time_factor": 0.16, "latency_ms": 170.0, **figures}
    return FrameStats(
        i * 0.08,
        int(i),
        encode_ms=3.0,
        lm_ms=7.0,
        decode_ms=2.5,
        input_level_db=mic_db,
        output_level_db=out_db,
        **values,  # type: ignore[arg-type]
    )


def screen_text(app: App[Any]) -> str:
    """The screen as plain text (what export_screenshot draws, without the SVG)."""
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), record=True)
    console.print(app.screen._compositor.render_update(full=True))
    return console.export_text()


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(test())


async def settle(pilot: Pilot[Any]) -> None:
    await pilot.pause()
    await pilot.pause()


# --- pure parts ---------------------------------------------------------------------------------


def test_voice_activity_has_a_threshold_and_a_hangover() -> None:
    vad = VoiceActivity(threshold_db=-45.0, hangover=0.5)
    assert not vad.update(-60.0, 0.0)
    assert vad.update(-30.0, 0.1)
    assert vad.update(-70.0, 0.5)  # a dip between words: still speaking
    assert not vad.update(-70.0, 0.6)  # 0.5 s after the last loud frame
    assert vad.update(-45.0, 0.7)  # the threshold itself counts


def test_only_frame_figures_merge() -> None:
    stats = StatsUpdated(frame(0), False, False)
    assert stats.can_replace(StatsUpdated(frame(1), True, False))
    assert not stats.can_replace(TextArrived(0.0, "hi"))
    assert not TextArrived(0.0, "hi").can_replace(TextArrived(0.1, "there"))


# --- a scripted session -------------------------------------------------------------------------


def test_transcript_blocks_on_pauses_and_speaker_changes() -> None:
    session = ScriptedSession()
    received: list[Message] = []

    async def test() -> None:
        app = make_app(session)
        async with app.run_test(size=SIZE, message_hook=received.append) as pilot:
            await settle(pilot)
            session.emit(
                TextEvent(1.0, 12, 5, " Hello"),
                TextEvent(1.1, 13, 6, " there,"),
                TextEvent(1.3, 15, 7, " friend."),
                TextEvent(2.6, 32, 8, " Still"),  # 1.3 s later: a new block
                TextEvent(2.7, 33, 9, " here."),
            )
            # the user speaks: loud frames 40..59, then quiet (hangover 0.5 s)
            session.emit(
                *(frame(i, mic_db=-20.0 if 40 <= i < 60 else -80.0) for i in range(36, 72))
            )
            # what the model wrote down of it (a model whose monologue does): in its block
            session.emit(HeardEvent(5.6, 70, 11, " add two"))
            session.emit(HeardEvent(5.7, 71, 12, " and three"))
            session.emit(TextEvent(5.8, 72, 10, " Right."))  # after the user: a new block
            await settle(pilot)
            turns = [(t.who, t.words) for t in app.query_one(Transcript).turns]
            assert turns == [
                ("assistant", "Hello there, friend."),
                ("assistant", "Still here."),
                ("user", "“add two and three”  spoke for 2.1 s"),
                ("assistant", "Right."),
            ]
            shown = screen_text(app)
            assert "0:01.0  assistant Hello there, friend." in shown
            assert "0:03.2  you       “add two and three”  spoke for 2.1 s" in shown
            speech = [(m.side, m.speaking) for m in received if isinstance(m, SpeechChanged)]
            assert speech == [("user", True), ("user", False)]
            assert sum(isinstance(m, TextArrived) for m in received) == 8

    run(test)


def test_the_printed_monologue_puts_what_was_heard_on_a_line_of_its_own(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`talk --no-tui`: a model that writes down the user's words shows them after "you: ";
    notices go to stderr on a line of their own."""
    from app.talk.cli import TerminalPrinter

    printer = TerminalPrinter()
    for text, heard in (("Hello.", False), (" add two", True), (" and three", True)):
        printer.emit(monologue_event(0.0, 0, 9, text, heard))
    printer.emit(TextEvent(0.0, 0, 9, " Five."))
    printer.notice("wrote the reply to reply.wav")  # a notice never shares the monologue's line
    printer.emit(TextEvent(0.0, 0, 9, " Bye."))
    printer.end_line()
    printed = capsys.readouterr()
    assert printed.out == "Hello.\nyou: add two and three\nFive.\nBye.\n"
    assert printed.err == "antiphon: wrote the reply to reply.wav\n"


def test_levels_and_status_follow_the_frames() -> None:
    session = ScriptedSession()
    received: list[Message] = []

    async def test() -> None:
        app = make_app(session)
        async with app.run_test(size=SIZE, message_hook=received.append) as pilot:
            await settle(pilot)
            meters = app.query_one("#mic", LevelMeter), app.query_one("#assistant", LevelMeter)
            assert [m.state for m in meters] == ["silent", "silent"]
            # a burst of frames posted in one go: StatsUpdated may merge, the last one wins
            session.emit(*(frame(i, out_db=-12.0, underruns=i // 10) for i in range(50)))
            session.emit(frame(50, out_db=-12.0, underruns=4, overruns=2, dropped_input=3))
            await settle(pilot)
            assert [m.state for m in meters] == ["listening", "speaking"]
            assert meters[1].level_db == -12.0
            rows = dict(app.query_one(StatusPanel).rows)
            assert rows["model"] == "scripted model"
            assert rows["input"] == "scripted microphone"
            assert rows["state"] == "running"
            assert rows["compute"] == "12.5 ms/frame · RTF 0.16"
            assert rows["latency"] == "170 ms mic→speaker"
            assert rows["underruns"] == "4 (speaker played silence)"
            assert rows["overruns"] == "2 (reply audio dropped)"
            assert rows["dropped"] == "3 mic frames"
            assert rows["time"] == "0:04.0 · 51 frames"
            shown = screen_text(app)
            assert "assistant speaking" in shown and "microphone listening" in shown
            assert "-12 dB" in shown
            stats = [m for m in received if isinstance(m, StatsUpdated)]
            assert stats[-1].stats.frame == 50

    run(test)


def test_every_key_drives_the_session(tmp_path: Path) -> None:
    session = ScriptedSession()

    async def test() -> None:
        app = make_app(session, record_dir=tmp_path / "recs")
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            status = app.query_one(StatusPanel)

            await pilot.press("m")
            assert session.muted
            assert app.query_one("#mic", LevelMeter).state == "muted"
            assert "muted" in dict(status.rows)["state"]
            await pilot.press("m")
            assert not session.muted

            await pilot.press("r")
            assert session.calls == ["reset"]

            await pilot.press("c")
            assert session.recorder is not None
            folder = session.recorder.folder
            assert folder.parent == tmp_path / "recs"
            assert dict(status.rows)["folder"] == str(folder)
            session.clock.time += 12.3
            await pilot.pause(0.6)  # the status panel's timer shows the duration running on
            assert dict(status.rows)["recording"] == "0:12.3 (c stops)"
            await pilot.press("c")
            assert session.calls[-1] == "stop_recording" and session.recorder is None
            assert dict(status.rows)["recording"] == "off (c records)"
            assert f"recorded {folder}" in app.notes

            await pilot.press("T", "T", "t", "A")
            text_t = [p.text_temperature for p in session.sampling_requests]
            audio_t = [p.audio_temperature for p in session.sampling_requests]
            assert text_t == [0.8, 0.9, 0.8, 0.8]
            assert audio_t == [0.8, 0.8, 0.8, 0.9]
            assert dict(status.rows)["temperature"] == "text 0.8 · audio 0.9"
            await pilot.press(*"a" * 12)  # clamped at 0
            assert session.sampling_requests[-1].audio_temperature == 0.0
            await pilot.press(*"T" * 14)  # clamped at 2
            assert session.sampling_requests[-1].text_temperature == 2.0

            await pilot.press("question_mark")
            assert isinstance(app.screen, HelpScreen)
            assert "reset the conversation" in screen_text(app)
            await pilot.press("escape")
            assert not isinstance(app.screen, HelpScreen)

            assert session.running
            await pilot.press("q")
            await pilot.pause()
        assert app.return_code == 0
        assert not session.running  # the conversation was cancelled and waited for

    run(test)


@pytest.mark.parametrize("keys", [["ctrl+c"], ["question_mark", "q"], []])
def test_every_way_out_stops_the_conversation(keys: list[str]) -> None:
    """ctrl+c, q on the help screen, and an exit from elsewhere (no keys: `app.exit()`)."""
    session = ScriptedSession()

    async def test() -> None:
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            assert session.running
            if keys:
                await pilot.press(*keys)
            else:
                app.exit(0)
            await pilot.pause()
        assert app.return_code == 0
        assert not session.running

    run(test)


def test_nothing_is_drawn_once_the_app_has_let_go_of_its_screen() -> None:
    """Under load the status timer fired after teardown and found no StatusPanel (NoMatches):
    leaving stops the timer, and a late tick or a late frame draws nothing."""
    session = ScriptedSession()

    async def test() -> None:
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press("q")
            await pilot.pause()
        app._show_status()  # what a late tick of the status timer does
        app.stats = frame(3, mic_db=-20.0)  # a late frame: its watcher redraws nothing
        app.muted = True
        assert app.return_code == 0

    run(test)


def test_errors_and_notices_show_with_their_hint(capsys: pytest.CaptureFixture[str]) -> None:
    session = ScriptedSession()

    async def test() -> None:
        app = make_app(session)
        app.notice("no microphone, so a demo utterance plays as your voice")  # before it runs
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            alert = app.query_one(AlertBar)
            assert alert.text == "• no microphone, so a demo utterance plays as your voice"
            session.emit(
                ErrorEvent(3.0, 40, "the model is slower than real time", hint="use a GPU")
            )
            await settle(pilot)
            assert alert.text == "• the model is slower than real time — use a GPU"
            assert alert.has_class("-warning")
            await pilot.press("escape")
            assert alert.text == "" and not alert.has_class("-visible")
            session.emit(
                ErrorEvent(4.0, 50, "microphone lost: gone", hint="reconnect it", fatal=True)
            )
            await settle(pilot)
            assert alert.has_class("-error")
            assert "⚠ microphone lost: gone — reconnect it" in screen_text(app)
            await pilot.press("q")
        assert app.return_code == 1

    run(test)
    printed = capsys.readouterr().err  # after exit, on the restored terminal
    assert "antiphon: no microphone, so a demo utterance plays" in printed
    assert "antiphon: microphone lost: gone (reconnect it)" in printed


def test_a_condition_alert_goes_when_the_condition_ends() -> None:
    """Slower than real time (here, or on the node) is a condition: once the session says it
    keeps up again the alert goes, and the notice it covered (the model's) is back."""
    session = ScriptedSession()

    async def test() -> None:
        app = make_app(session)
        app.notice("no bundled model yet: serving a small random model")
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            alert = app.query_one(AlertBar)
            notice = "• no bundled model yet: serving a small random model"
            for code in (SLOWER_THAN_REAL_TIME, NODE_BEHIND):
                slow = ErrorEvent(3.0, 40, "slower than real time", hint="a GPU", code=code)
                session.emit(slow)
                await settle(pilot)
                assert alert.text == "• slower than real time — a GPU"
                session.emit(StateEvent(5.0, 60, CAUGHT_UP, "keeps up again (40 ms a step)"))
                await settle(pilot)
                assert alert.text == notice and alert.has_class("-visible")
                assert "keeps up again (40 ms a step)" in screen_text(app)
            # other problems are no condition: they stay until the next one, or escape
            session.emit(ErrorEvent(6.0, 70, "speaker lost"))
            session.emit(StateEvent(7.0, 80, CAUGHT_UP, "keeps up again"))
            await settle(pilot)
            assert alert.text == "• speaker lost"
            await pilot.press("q")

    run(test)


@pytest.mark.parametrize(
    ("error", "code", "printed"),
    [
        (AudioDeviceError("no input device named 'nope'"), 2, "antiphon: no input device"),
        (RuntimeError("a bug"), 1, "RuntimeError: a bug"),
    ],
)
def test_a_failing_conversation_ends_the_app(
    error: BaseException, code: int, printed: str, capsys: pytest.CaptureFixture[str]
) -> None:
    session = ScriptedSession(fail_with=error)

    async def test() -> None:
        app = make_app(session)
        app.notice("a notice before the failure")
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
        assert app.return_code == code

    run(test)
    err = capsys.readouterr().err
    assert "antiphon: a notice before the failure" in err
    assert printed in err


def test_main_screen_snapshot(snap_compare: Callable[..., bool]) -> None:
    """Deterministic content (scripted events, a fixed clock); no widget here has a blinking
    cursor, and the header shows no clock, so nothing on screen depends on when it is taken."""
    session = ScriptedSession()
    session.recorder, session.recording_started = FakeRecording(Path("recordings/demo")), 87.7

    async def script(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        session.emit(
            TextEvent(0.4, 5, 1, " Hello,"),
            TextEvent(0.5, 6, 2, " I'm"),
            TextEvent(0.6, 7, 3, " listening."),
        )
        session.emit(*(frame(i, mic_db=-22.0 if 15 <= i < 40 else -70.0) for i in range(10, 48)))
        session.emit(TextEvent(3.9, 48, 4, " Tell me more about it."))
        session.emit(*(frame(i, mic_db=-24.0, out_db=-18.0) for i in range(49, 56)))
        session.emit(ErrorEvent(4.4, 55, "the model is slower than real time", hint="use a GPU"))
        await settle(pilot)

    assert snap_compare(make_app(session), terminal_size=SIZE, run_before=script)


# --- a real session: the random tiny model on a JACK dummy server -------------------------------


def test_real_session_on_jack(jack_server: JackServer, tmp_path: Path) -> None:
    model = random_model(torch.device("cpu"), SamplingParams())
    engine = Engine(model)
    engine.warm_up()
    session = TalkSession(engine, "system", "system", notices=lambda text: None)
    _satisfies(session)
    log = EventLog()
    session.events.sinks.append(log)

    async def wait_for(pilot: Pilot[Any], condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 10
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await pilot.pause(0.05)

    async def test() -> TalkApp:
        app = make_app(session, record_dir=tmp_path / "recordings")
        async with app.run_test(size=SIZE) as pilot:
            status = app.query_one(StatusPanel)
            await wait_for(pilot, lambda: app.stats is not None, "the first frame")
            rows = dict(status.rows)
            assert rows["model"] == "random tiny model (untrained)"
            assert "JACK" in rows["input"] and "JACK" in rows["output"]
            assert rows["state"] == "running"

            await pilot.press("m")
            assert session.muted
            await pilot.press("m")
            assert not session.muted

            await pilot.press("r")
            transcript = app.query_one(Transcript)
            await wait_for(
                pilot, lambda: any("reset" in t.words for t in transcript.turns), "the reset"
            )

            await pilot.press("T", "a")
            await wait_for(
                pilot, lambda: engine.sampling.text_temperature == 0.8, "the new sampling"
            )
            assert engine.sampling.audio_temperature == 0.7

            await pilot.press("c")
            assert session.recorder is not None
            folder = session.recorder.folder
            await pilot.pause(0.5)
            await pilot.press("c")
            assert session.recorder is None
            await pilot.press("c")  # a second recording, still running when q is pressed
            assert session.recorder is not None
            second = session.recorder.folder
            await pilot.pause(0.3)
            await pilot.press("q")
        audio, rate = soundfile.read(folder / "session.wav")
        assert rate == 24000 and audio.shape[1] == 2 and len(audio) >= 3 * 1920
        # started by `c` mid-session, the recording still counts from its own frame 0
        recording = read_recording(folder)
        frames = len(audio) // 1920
        stats = [e for e in recording.events if e["type"] == "frame"]
        assert stats and stats[0]["frame"] <= 1 and stats[-1]["frame"] < frames
        assert all(e["frame"] < frames and e["time"] < frames * 0.08 + 0.5 for e in stats)
        assert recording.meta["summary"]["frames"] == len(stats) <= recording.meta["frames"]
        assert soundfile.info(second / "session.wav").frames > 0  # closed by the session
        assert app.notes == [f"recorded {folder}", f"recorded {second}"]
        return app

    app = asyncio.run(test())
    assert app.return_code == 0
    assert log.of(StateEvent)[-1].state == "stopped"  # the app waited for the conversation
    assert session.events.sinks == [log]


def test_the_cli_loads_textual_only_for_the_tui() -> None:
    code = "import sys, app.cli; print('textual' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
