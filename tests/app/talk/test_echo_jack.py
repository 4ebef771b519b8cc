"""Echo cancellation on a real JACK echo loop: the talk path's devices, canceller and recording.

The app side is what `antiphon talk` runs (app.talk.devices opens PortAudio on JACK and the
canceller, app.core.runtime converses, the recording keeps the raw microphone too), with a
scripted far end standing in for the model: it says a long espeak-ng text whatever it hears.
A second JACK client (tests/app/talk/echo_room.py) closes the loop as a room does: the speaker's
output, delayed, reverberated and scaled, comes back into the microphone, with the user's
espeak-ng speech on top at chosen times; mid-session the echo path jumps (delay and gain).
tests/app/talk/echo_loop.py measures it; test_echo_remote.py does the same for `talk --remote`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import pytest

from app.core.audio import AudioFormat
from app.core.engine import Engine
from app.core.events import EventFanout
from app.core.recording import Recorder
from app.core.runtime import Conversation, RealClock
from app.talk.devices import open_devices, open_echo_canceller
from audio_io.echo import EchoCanceller
from model import SamplingParams
from tests.app.talk.echo_loop import (
    FIRST_PATH,
    FRAME,
    RATE,
    FarEndScript,
    ScriptedFarEnd,
    check,
    check_heard_is_recorded,
    far_end_speech,
    late_move_trace,
    measure,
    talk_in_the_room,
)
from tests.app.talk.echo_room import EchoRoom
from tests.jack_server import JackServer, make_jack_fixture

jack_server = make_jack_fixture()


@dataclass
class Devices:
    """What app.talk.devices reads of a session: JACK's one PortAudio device, both ways."""

    input_device: str | None = "system"
    output_device: str | None = "system"
    demo_out: Path = Path("unused.wav")
    clock: RealClock = field(default_factory=RealClock)
    events: EventFanout = field(default_factory=EventFanout)
    devices: dict[str, str] = field(default_factory=dict)

    def notice(self, text: str) -> None:
        print(f"notice: {text}")


async def converse(
    server: JackServer, far_end: ScriptedFarEnd, folder: Path
) -> tuple[EchoRoom, EchoCanceller]:
    """Run the loop: far end speaking, the room echoing it with the user on top; returns it
    and the canceller."""
    session = Devices()
    with (
        EchoRoom(server, FIRST_PATH) as room,
        open_devices(session, AudioFormat(RATE, FRAME), print) as (source, sink, collected),
    ):
        echo = open_echo_canceller(session, AudioFormat(RATE, FRAME), source, sink)
        assert echo is not None, session.devices
        recorder = Recorder(
            folder / "session",
            AudioFormat(RATE, FRAME),
            "scripted far end",
            SamplingParams(),
            session.devices,
            keep_microphone=True,
        )
        session.events.sinks.append(recorder)
        engine = cast(Engine, far_end)  # the runtime needs only the engine's frame interface
        conversation = Conversation(
            engine, source, sink, session.events, session.clock, recorder, echo=echo
        )
        far_end.conversation = conversation
        try:
            await talk_in_the_room(room, folder, conversation.run())
        finally:
            recorder.close()
        return room, echo


@pytest.mark.slow
def test_echo_is_cancelled_on_a_real_jack_loop_and_the_user_survives(
    jack_server: JackServer, tmp_path: Path
) -> None:
    script = FarEndScript(far_end_speech(tmp_path))
    far_end = ScriptedFarEnd(script)
    room, echo = asyncio.run(converse(jack_server, far_end, tmp_path))

    # What the far end heard is the recording's user channel, frame for frame; frames the
    # runtime dropped to keep up (the busy machine stalls it: 4 of 8 runs once) are silence.
    check_heard_is_recorded(tmp_path / "session", far_end.heard_at, script.heard)
    figures = measure(tmp_path / "session", room)
    print(f"{figures.report()}\ndelay moves (frame, s) {echo.delay_moves}")
    print(f"placement jumps (played frame, samples) {echo.placement_jumps}")
    print(f"capture jumps (frame, samples) {echo.capture_jumps}")
    print(late_move_trace(figures, echo.lag_estimates))
    check(figures)
