"""Echo cancellation on a real JACK echo loop: the talk path's devices, canceller and recording.

The app side is what `antiphon talk` runs (app.talk.devices opens PortAudio on JACK and the
canceller, app.core.runtime converses, the recording keeps the raw microphone too), with a
scripted far end standing in for the model: it says a long espeak-ng text whatever it hears.
A second JACK client (tests/app/talk/echo_room.py) closes the loop as a room does: the speaker's
output, delayed, reverberated and scaled, comes back into the microphone, with the user's
espeak-ng speech on top at chosen times; mid-session the echo path jumps (delay and gain).

Measured per 80 ms frame of the recording, whose raw-microphone file and cleaned user channel
share one clock, against what the room fed (so every frame is known to hold echo, user speech,
both or neither): ERLE (raw over cleaned power) on echo-only frames, how long after the first
echo and after the path change it takes to hold 25 dB, and whether the user's voice survives
double talk (Silero VAD, `antiphon eval`'s detector, on the cleaned channel).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import pytest
import soundfile

from app.core.audio import AudioFormat
from app.core.engine import Engine, StepResult
from app.core.events import EventFanout
from app.core.recording import MICROPHONE_WAV, Recorder, read_recording
from app.core.runtime import Conversation, RealClock
from app.eval.vad import speech_segments
from app.talk.devices import open_devices, open_echo_canceller
from audio_io.files import read_audio
from model import SamplingParams
from tests.app.talk.echo_room import EchoPath, EchoRoom
from tests.jack_server import JackServer, make_jack_fixture, require_tool

jack_server = make_jack_fixture()
RATE, FRAME = 24000, 1920
FIRST_PATH = EchoPath(delay=0.04, gain_db=-10.0)
SECOND_PATH = EchoPath(delay=0.11, gain_db=-6.0, seed=1)  # 70 ms later and 4 dB louder
FAR_END_TEXT = (
    "Good morning. Today the weather will be mostly sunny with a light breeze from the west. "
    "In the afternoon a few clouds may gather over the hills, and there is a small chance of "
    "rain by the evening. Tomorrow looks brighter again, with warmer air arriving from the "
    "south and clear skies for most of the day."
)
USER_LINES = ("Wait, can you tell me the train times?", "No, the next one, please.")
ERLE_TARGET_DB = 25.0


def espeak(text: str, voice: str, folder: Path) -> np.ndarray:
    path = folder / f"{abs(hash((text, voice)))}.wav"
    tool = require_tool("espeak-ng", "espeak-ng")
    subprocess.run([tool, "-v", voice, "-w", str(path), text], check=True, capture_output=True)
    return read_audio(path, RATE)


class ScriptedFarEnd:
    """Stands in for the model's engine: says `script`, frame by frame, keeps what it heard."""

    frame_size = FRAME
    sample_rate = RATE
    frame_duration = FRAME / RATE
    sampling = SamplingParams()

    def __init__(self, script: np.ndarray) -> None:
        self.script = np.pad(script, (0, -len(script) % FRAME))
        self.frames = 0
        self.heard: list[np.ndarray] = []

    def step(self, pcm: np.ndarray) -> StepResult:
        self.heard.append(pcm.copy())
        at = self.frames * FRAME
        out = self.script[at : at + FRAME]
        out = out if len(out) == FRAME else np.zeros(FRAME, np.float32)
        self.frames += 1
        return StepResult(out.astype(np.float32), -1, "", 0.0, 0.0, 0.0)

    def reset(self) -> None: ...

    def set_sampling(self, params: SamplingParams) -> None: ...


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


def _portaudio_connected(room: EchoRoom) -> bool:
    client = room.client
    return bool(client.get_all_connections("system:capture_1")) and bool(
        client.get_all_connections("system:playback_1")
    )


async def _converse(server: JackServer, far_end: ScriptedFarEnd, folder: Path) -> EchoRoom:
    """Run the loop: far end speaking, the room echoing it with the user on top; returns it."""
    user_voice = [espeak(line, "en+f3", folder) * 0.5 for line in USER_LINES]
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
        task = asyncio.create_task(conversation.run())
        try:
            while not _portaudio_connected(room):
                await asyncio.sleep(0.02)
            room.connect_portaudio()
            while room.first_played is None:
                await asyncio.sleep(0.02)
            start = room.first_played  # the far end's first sound, on the JACK clock
            room.say(user_voice[0], at=start + round(2.5 * RATE))
            room.say(user_voice[1], at=start + round(5.5 * RATE))
            room.change_path_at(start + 8 * RATE, SECOND_PATH)
            while room.position < start + 11 * RATE:
                await asyncio.sleep(0.05)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            recorder.close()
        return room


def _offset(recorded: np.ndarray, fed: np.ndarray) -> int:
    """L such that recorded[i] is fed[i + L] (both on their own clocks)."""
    n = 1 << (len(recorded) + len(fed)).bit_length()
    xc = np.fft.irfft(np.fft.rfft(fed, n) * np.conj(np.fft.rfft(recorded, n)), n)
    lag = int(np.argmax(xc))
    return lag if lag < n // 2 else lag - n


def _frame_power(x: np.ndarray) -> np.ndarray:
    x = x[: len(x) // FRAME * FRAME].astype(np.float64)
    return np.mean(np.square(x.reshape(-1, FRAME)), axis=1)


def _settled_after(erle_ok: np.ndarray, start: int, stop: int) -> float | None:
    """Seconds from frame `start` until ERLE holds the target on every later window < stop."""
    for first in range(start, stop):
        if erle_ok[first:stop].all():
            return (first - start) * FRAME / RATE
    return None


@pytest.mark.slow
def test_echo_is_cancelled_on_a_real_jack_loop_and_the_user_survives(
    jack_server: JackServer, tmp_path: Path
) -> None:
    far_speech = espeak(FAR_END_TEXT, "en-us", tmp_path) * 0.6
    script = np.concatenate([np.zeros(round(1.5 * RATE), np.float32), far_speech])
    far_end = ScriptedFarEnd(script)
    room = asyncio.run(_converse(jack_server, far_end, tmp_path))

    recording = read_recording(tmp_path / "session")
    raw, _ = soundfile.read(tmp_path / "session" / MICROPHONE_WAV, dtype="float32")
    cleaned = recording.user
    assert len(raw) == len(cleaned)  # one clock: a frame of each per frame
    assert np.allclose(np.concatenate(far_end.heard)[: len(cleaned)], cleaned, atol=1 / 16384)

    # Where each recorded sample was in the room, then what each frame held.
    fed_echo, fed_user = room.fed_echo[: room.position], room.fed_user[: room.position]
    shift = _offset(raw, fed_echo + fed_user)
    assert shift >= 0
    echo = _frame_power(fed_echo[shift:])
    user = _frame_power(fed_user[shift:])
    frames = min(len(echo), len(raw) // FRAME)
    echo, user = echo[:frames], user[:frames]
    raw_power, clean_power = _frame_power(raw)[:frames], _frame_power(cleaned)[:frames]
    near_user = np.convolve(user > 0, np.ones(3), mode="same") > 0  # and a frame either side
    echo_only = (echo > 1e-5) & ~near_user  # the echo louder than -50 dBFS, no user

    # ERLE over windows of 6 frames (0.48 s) starting at each frame, echo-only frames only.
    window = 6
    erle = np.full(frames, np.inf)
    for i in range(frames - window):
        sel = echo_only[i : i + window]
        if sel.sum() >= 3:
            erle[i] = 10 * np.log10(
                raw_power[i : i + window][sel].sum()
                / (clean_power[i : i + window][sel].sum() + 1e-12)
            )
    erle_ok = erle >= ERLE_TARGET_DB
    first_echo = int(np.argmax(echo > 1e-5))
    change = first_echo + 8 * RATE // FRAME  # the path jumped 8 s after the far end began
    settled = _settled_after(erle_ok, first_echo, change - window)
    resettled = _settled_after(erle_ok, change, frames - window)
    finite = erle[np.isfinite(erle)]
    steady = [e for i, e in enumerate(erle) if np.isfinite(e) and erle_ok[i]]
    lines = (tmp_path / "session/events.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    stats = [e for e in events if e["type"] == "frame"]

    # Double talk: the user's voice is still in what the model heard.
    vad = speech_segments(cleaned, RATE)
    user_frames = np.flatnonzero(user > 0)
    utterances = np.split(user_frames, np.flatnonzero(np.diff(user_frames) > 1) + 1)
    covered = []
    for utterance in utterances:
        lo, hi = utterance[0] * FRAME / RATE, (utterance[-1] + 1) * FRAME / RATE
        found = sum(max(0.0, min(hi, b) - max(lo, a)) for a, b in vad)
        covered.append(found / (hi - lo))
    # ...and the far end's echo alone is not taken for a voice once the canceller has settled.
    echo_speech = 0.0
    for a, b in vad:
        for i in range(int(a * RATE / FRAME), int(b * RATE / FRAME) + 1):
            if i < frames and echo_only[i] and i >= first_echo + 13:
                echo_speech += FRAME / RATE
    print(
        f"offset {shift} samples; ERLE windows median {np.median(finite):.1f} dB, "
        f"min {finite.min():.1f} dB; settled {settled} s after the first echo, "
        f"{resettled} s after the path change; double talk covered {covered}; "
        f"echo heard as speech {echo_speech:.2f} s; steady median {np.median(steady):.1f} dB"
    )
    print("ERLE per window", [round(float(e)) if np.isfinite(e) else None for e in erle])
    assert len(utterances) == len(USER_LINES)
    # Held on every run here (2 busy cores): echo removed well beyond the raw microphone, and
    # voice activity found on every user utterance through double talk (a third of it at least).
    assert np.median(finite) >= ERLE_TARGET_DB
    assert all(c >= 0.3 for c in covered), covered
    assert all(e["echo_cancel"] for e in stats)
    loud = [e["erle_db"] for e in stats if e["erle_db"] is not None]
    assert len(loud) > 50 and np.median(loud) >= ERLE_TARGET_DB
    # Not yet held on every run (docs/echo.md, "Not yet met"): ERLE >= 25 dB on every window
    # within 1 s of the first echo and of the path change; `settled` and `resettled` are
    # printed above for the record.
