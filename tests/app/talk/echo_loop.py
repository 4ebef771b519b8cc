"""What the echo-loop tests share (local `talk` and `talk --remote` on a real JACK room).

    script = FarEndScript(far_end_speech(folder))  # what the far end says, frame by frame
    ...open the app's side (PortAudio on JACK, the canceller, a recording with the raw mic)...
    with EchoRoom(server, FIRST_PATH) as room:
        await talk_in_the_room(room, folder, conversation.run())  # the user talks, the path jumps
    figures = measure(folder / "session", room)    # ERLE, convergence, double talk
    check(figures)

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
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile

from app.core.engine import StepResult
from app.core.recording import MICROPHONE_WAV, read_recording
from app.core.runtime import Conversation
from app.eval.vad import speech_segments
from audio_io.echo_delay import LagEstimate
from audio_io.files import read_audio
from model import SamplingParams
from tests.app.talk.echo_room import EchoPath, EchoRoom
from tests.jack_server import require_tool

RATE, FRAME = 24000, 1920
FIRST_PATH = EchoPath(delay=0.04, gain_db=-10.0)
SECOND_PATH = EchoPath(delay=0.11, gain_db=-6.0, seed=1)  # 70 ms later and 4 dB louder
CHANGE_AFTER = 8  # seconds after the far end's first sound, the path jumps
RUN_FOR = 11  # seconds after the far end's first sound, the loop ends
FAR_END_TEXT = (
    "Good morning. Today the weather will be mostly sunny with a light breeze from the west. "
    "In the afternoon a few clouds may gather over the hills, and there is a small chance of "
    "rain by the evening. Tomorrow looks brighter again, with warmer air arriving from the "
    "south and clear skies for most of the day."
)
USER_LINES = ("Wait, can you tell me the train times?", "No, the next one, please.")
USER_AT = (2.5, 5.5)  # seconds after the far end's first sound, each line starts
ERLE_TARGET_DB = 25.0
WINDOW = 6  # frames (0.48 s) per ERLE window
# Seconds after the path change within which ERLE must hold the target again on every window
# (`check`): the target is 1 s, and this bound is what a tracker that follows always meets.
RESETTLED_AT_MOST = 2.0


def espeak(text: str, voice: str, folder: Path) -> np.ndarray:
    path = folder / f"{abs(hash((text, voice)))}.wav"
    tool = require_tool("espeak-ng", "espeak-ng")
    subprocess.run([tool, "-v", voice, "-w", str(path), text], check=True, capture_output=True)
    return read_audio(path, RATE)


def far_end_speech(folder: Path) -> np.ndarray:
    """1.5 s of silence, then 17 s of espeak-ng speech: what the far end says."""
    speech = espeak(FAR_END_TEXT, "en-us", folder) * 0.6
    return np.concatenate([np.zeros(round(1.5 * RATE), np.float32), speech])


class FarEndScript:
    """The far end's speech, frame by frame (silence once it is over), and what it heard."""

    def __init__(self, audio: np.ndarray) -> None:
        self.audio = np.pad(audio, (0, -len(audio) % FRAME)).astype(np.float32)
        self.frames = 0
        self.heard: list[np.ndarray] = []

    def step(self, pcm: np.ndarray) -> np.ndarray:
        self.heard.append(pcm.copy())
        at = self.frames * FRAME
        out = self.audio[at : at + FRAME]
        self.frames += 1
        return out if len(out) == FRAME else np.zeros(FRAME, np.float32)

    def rewind(self) -> None:
        self.frames = 0
        self.heard.clear()


class ScriptedFarEnd:
    """Stands in for the model's engine in a local conversation: says its script, frame by
    frame, and keeps the conversation's index of each frame it heard (`heard_at`, with
    `script.heard`): the runtime drops microphone frames to keep up, so the n-th frame heard is
    not always the recording's n-th frame."""

    frame_size = FRAME
    sample_rate = RATE
    frame_duration = FRAME / RATE
    sampling = SamplingParams()

    def __init__(self, script: FarEndScript) -> None:
        self.script = script
        self.conversation: Conversation | None = None  # set once the conversation exists
        self.heard_at: list[int] = []

    def step(self, pcm: np.ndarray) -> StepResult:
        assert self.conversation is not None
        self.heard_at.append(self.conversation.frame)  # set before the step, on the loop
        return StepResult(self.script.step(pcm), -1, "", 0.0, 0.0, 0.0)

    def reset(self) -> None: ...

    def set_sampling(self, params: SamplingParams) -> None: ...


def check_heard_is_recorded(folder: Path, heard_at: list[int], heard: list[np.ndarray]) -> None:
    """What the far end heard is the recording's user channel, frame for frame on the
    conversation's clock; the frames it never heard (dropped to keep up) are silence there.
    The last frame heard may be missing from the recording (the conversation was cancelled
    between its step and its recording)."""
    user = read_recording(folder).user
    frames = len(user) // FRAME
    assert len(heard_at) == len(heard) and heard_at == sorted(set(heard_at))
    assert frames >= 1 and heard_at[-1] <= frames
    for index, pcm in zip(heard_at, heard, strict=True):
        if index < frames:
            recorded = user[index * FRAME : (index + 1) * FRAME]
            assert np.allclose(pcm, recorded, atol=1 / 16384), f"frame {index} differs"
    for index in sorted(set(range(frames)) - set(heard_at)):
        assert not user[index * FRAME : (index + 1) * FRAME].any(), f"frame {index} not silent"


def _portaudio_connected(room: EchoRoom) -> bool:
    client = room.client
    return bool(client.get_all_connections("system:capture_1")) and bool(
        client.get_all_connections("system:playback_1")
    )


async def play_the_room(room: EchoRoom, folder: Path) -> None:
    """Once PortAudio's streams run: put the room between them, and from the far end's first
    sound, the user's two lines (double talk) and the path change, for RUN_FOR seconds."""
    user_voice = [espeak(line, "en+f3", folder) * 0.5 for line in USER_LINES]
    while not _portaudio_connected(room):
        await asyncio.sleep(0.02)
    room.connect_portaudio()
    while room.first_played is None:
        await asyncio.sleep(0.02)
    start = room.first_played  # the far end's first sound, on the JACK clock
    for voice, at in zip(user_voice, USER_AT, strict=True):
        room.say(voice, at=start + round(at * RATE))
    room.change_path_at(start + CHANGE_AFTER * RATE, SECOND_PATH)
    while room.position < start + RUN_FOR * RATE:
        await asyncio.sleep(0.05)


async def talk_in_the_room(room: EchoRoom, folder: Path, talk: Coroutine[Any, Any, Any]) -> None:
    """Run `talk` (the app's side of the conversation) while `play_the_room`; then cancel it, as
    the user's Ctrl-C does."""
    task = asyncio.create_task(talk)
    try:
        await play_the_room(room, folder)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@dataclass(frozen=True)
class EchoFigures:
    erle: np.ndarray  # dB per 0.48 s window starting at each frame (inf: no echo-only frames)
    settled: float | None  # seconds after the first echo until every window holds the target
    resettled: float | None  # the same after the path change
    covered: list[float]  # per user utterance, the share the VAD found in the cleaned channel
    echo_speech: float  # seconds of settled echo-only frames the VAD took for speech
    frame_erle: list[float | None]  # events.jsonl's per-frame estimate
    echo_cancel: list[bool]  # events.jsonl's per-frame flag
    xruns: int  # the speaker's device xruns (a stalled machine), from the last frame's event
    utterances: int  # user utterances the room fed
    offset: int  # samples from the room's clock to the recording's
    first_echo: int  # frame of the first echo in the recording
    change: int  # frame of the path change
    raw_power: np.ndarray  # per frame: mean square of the microphone as it came
    clean_power: np.ndarray  # per frame: the same of what the model heard (cancelled)
    user_frames: np.ndarray  # per frame: the room fed the user's speech (bool)

    @property
    def first_path(self) -> np.ndarray:
        """ERLE windows on the first path, from 1 s after the first echo (converged) until the
        windows reach the path change."""
        window = self.erle[self.first_echo + round(RATE / FRAME) : self.change - WINDOW]
        return window[np.isfinite(window)]

    @property
    def finite(self) -> np.ndarray:
        return self.erle[np.isfinite(self.erle)]

    def report(self) -> str:
        finite = self.finite
        loud = [e for e in self.frame_erle if e is not None]
        steady = finite[finite >= ERLE_TARGET_DB]
        covered = [round(c, 2) for c in self.covered]
        return (
            f"offset {self.offset} samples; ERLE windows median {np.median(finite):.1f} dB "
            f"(first path, converged: {np.median(self.first_path):.1f} dB), "
            f"min {finite.min():.1f} dB; settled {self.settled} s after the first echo, "
            f"{self.resettled} s after the path change; double talk covered {covered}; echo "
            f"heard as speech {self.echo_speech:.2f} s; steady median "
            f"{np.median(steady) if len(steady) else float('nan'):.1f} dB; events' erle_db "
            f"median {np.median(loud) if loud else float('nan'):.1f} dB; xruns {self.xruns}"
            f"\nERLE per window "
            f"{[round(float(e)) if np.isfinite(e) else None for e in self.erle]}"
        )


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


def measure(folder: Path, room: EchoRoom) -> EchoFigures:
    """The figures of the recording in `folder` (with microphone.wav) of a loop through `room`."""
    cleaned = read_recording(folder).user
    raw, _ = soundfile.read(folder / MICROPHONE_WAV, dtype="float32")
    assert len(raw) == len(cleaned)  # one clock: a frame of each per frame

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
    # The echo louder than -50 dBFS, no user, and a frame the recording holds (a remote one has
    # silence for frames the node never answered).
    echo_only = (echo > 1e-5) & ~near_user & (raw_power > 0)

    # ERLE over windows of WINDOW frames starting at each frame, echo-only frames only.
    erle = np.full(frames, np.inf)
    for i in range(frames - WINDOW):
        sel = echo_only[i : i + WINDOW]
        if sel.sum() >= 3:
            erle[i] = 10 * np.log10(
                raw_power[i : i + WINDOW][sel].sum()
                / (clean_power[i : i + WINDOW][sel].sum() + 1e-12)
            )
    erle_ok = erle >= ERLE_TARGET_DB
    first_echo = int(np.argmax(echo > 1e-5))
    change = first_echo + CHANGE_AFTER * RATE // FRAME
    events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
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
    return EchoFigures(
        erle=erle,
        settled=_settled_after(erle_ok, first_echo, change - WINDOW),
        resettled=_settled_after(erle_ok, change, frames - WINDOW),
        covered=[float(c) for c in covered],
        echo_speech=echo_speech,
        frame_erle=[e["erle_db"] for e in stats],
        echo_cancel=[e["echo_cancel"] for e in stats],
        xruns=stats[-1]["xruns"] if stats else 0,
        utterances=len(utterances),
        offset=shift,
        first_echo=first_echo,
        change=change,
        raw_power=raw_power,
        clean_power=clean_power,
        user_frames=user > 0,
    )


def late_move_trace(figures: EchoFigures, estimates: Iterable[tuple[int, LagEstimate]]) -> str:
    """Where the path change took more than 1 s to re-converge (or never did): the delay
    tracker's estimates from just before the change on (frames on the canceller's count, which
    starts with the recording's), to tell whether the move waited for a sharp peak, for the
    echo's share, or for a second estimate. Empty otherwise."""
    if figures.resettled is not None and figures.resettled <= 1.0:
        return ""
    rows = [
        f"  frame {frame}: lag {1000 * e.lag:.1f} ms, sharpness {e.sharpness:.1f}, "
        f"share {e.share:.2f}"
        for frame, e in estimates
        if figures.change - 4 <= frame <= figures.change + 24
    ]
    return "re-converged late; the tracker's estimates after the path change:\n" + "\n".join(rows)


def check(figures: EchoFigures, estimate_held: bool = True) -> None:
    """What holds on every run here (2 busy cores):

    - after convergence, echo removed by 25 dB or more (the median of the windows on the first
      path, from 1 s after the first echo);
    - converged within 1 s of the first echo: 25 dB on every window from then on (0.0 s in
      all 35 runs of the eighteenth session, 0.0-0.16 s before);
    - voice activity found on every user utterance through double talk (a third of it at
      least);
    - after the path change, 25 dB on every window again within RESETTLED_AT_MOST seconds.
      The target there is 1 s, met in 76 of 79 JACK runs since the tracker's run rule (the
      others 1.04, 1.12 and, before its margin, 1.92 s; docs/echo.md), so it is printed; the
      bound fails a tracker that does not follow (without it, most runs never came back in
      the 3 s left);
    - `estimate_held`: the events' own per-frame estimate has a median of 25 dB or more too
      (locally; remotely it was 18.6-27.5 dB over five runs without the tracker, 36.6-44.0 dB
      over seven with it: printed, not held).

    The median over the whole run mixes in the seconds after the path change: printed, not
    held."""
    assert figures.utterances == len(USER_LINES)
    assert len(figures.first_path) > 10
    assert np.median(figures.first_path) >= ERLE_TARGET_DB, figures.report()
    assert all(c >= 0.3 for c in figures.covered), figures.covered
    settled = figures.settled
    assert settled is not None and settled <= 1.0, figures.report()
    resettled = figures.resettled
    assert resettled is not None and resettled <= RESETTLED_AT_MOST, figures.report()
    assert figures.echo_cancel and all(figures.echo_cancel)
    loud = [e for e in figures.frame_erle if e is not None]
    assert len(loud) > 50
    if estimate_held:
        assert np.median(loud) >= ERLE_TARGET_DB, figures.report()
