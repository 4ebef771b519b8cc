"""The sound devices of a conversation held here (`talk`, local or remote), with fallbacks.

The devices run in PortAudio's threads; their callbacks hand frames to the event loop with
`call_soon_threadsafe` and never block. With no microphone on the machine (a server, CI), a
demo utterance plays as the user's voice instead, in real time (a question spoken by espeak-ng,
DEMO_QUESTION, shipped beside the model; else a hum with a syllable rhythm); with no speaker,
the reply is collected for a WAV. A session needs only what `DeviceUser` names to have its devices
opened: `TalkSession` and `RemoteTalkSession` both have it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

from app.core.audio import AudioFormat
from app.core.events import ErrorEvent, EventSink
from app.core.models import ASSETS
from app.core.runtime import (
    AudioSink,
    AudioSource,
    CapturedFrame,
    Clock,
    CollectingSink,
    DropOldestQueue,
    PacedFileSource,
)
from audio_io.devices import DeviceInfo, find_device
from audio_io.echo import EchoCancelError, EchoCanceller, EchoConfig
from audio_io.errors import AudioDeviceError, AudioFileError
from audio_io.files import read_audio
from audio_io.streams import Microphone, Speaker


class DeviceUser(Protocol):
    """What opening a conversation's devices reads of its session, and tells it."""

    @property
    def input_device(self) -> str | None: ...  # index or name; None: the default, or a demo

    @property
    def output_device(self) -> str | None: ...

    @property
    def demo_out(self) -> Path: ...  # where the reply goes when there is no speaker

    @property
    def clock(self) -> Clock: ...

    @property
    def events(self) -> EventSink: ...  # a lost microphone is reported here

    @property
    def devices(self) -> dict[str, str]: ...  # gets "input" and "output": what was opened

    def notice(self, text: str) -> None: ...


DEMO_SECONDS = 6.0  # at least: a question, then the answer's time
ANSWER_SECONDS = 3.5  # at least, after the question
# What the demo utterance says: espeak-ng's voice, written by scripts/demo_question.py into
# DEMO_QUESTION_FILE (a question the bundled model was trained on, so its answer shows what it
# does with one).
DEMO_QUESTION = "Hello! What's your name?"
DEMO_QUESTION_FILE = ASSETS / "demo-question.flac"


def demo_user_signal(sample_rate: int) -> tuple[np.ndarray, str]:
    """The user's side when there is no microphone, and what it is: the shipped spoken question
    followed by silence for the answer (DEMO_SECONDS in all, longer for a long question), else
    DEMO_SECONDS of the generated hum."""
    try:
        spoken = read_audio(DEMO_QUESTION_FILE, sample_rate)
    except AudioFileError:
        return generated_user_signal(DEMO_SECONDS, sample_rate), "demo utterance (generated)"
    length = max(
        round(DEMO_SECONDS * sample_rate), len(spoken) + round(ANSWER_SECONDS * sample_rate)
    )
    out = np.zeros(length, np.float32)
    out[: len(spoken)] = spoken
    return out, f'demo question "{DEMO_QUESTION}" (espeak-ng)'


def generated_user_signal(seconds: float, sample_rate: int) -> np.ndarray:
    """Two voiced 'utterances' (a gliding harmonic tone with syllable rhythm) and pauses."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    pitch = 140 + 40 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 6))
    syllables = np.clip(np.sin(2 * np.pi * 4 * t), 0, None)
    speaking = ((t % 3.0) < 1.6).astype(np.float64)  # 1.6 s of speech every 3 s
    return (0.25 * voice * syllables * speaking).astype(np.float32)


class MicrophoneSource:
    """Frames from a PortAudio input, handed to the loop from its callback thread.

    A bounded queue takes them (the oldest dropped when the loop falls `queue_frames` behind:
    a stalled machine, a slow send); each frame says how many were dropped just before it
    (`CapturedFrame.dropped_before`), so that they keep their places on the conversation's
    clock and are counted.

    The source ends (and with it the conversation, whose recording is then closed) if the
    device disappears; the reason goes to `events` as an error.
    """

    def __init__(self, device: DeviceInfo, events: EventSink, queue_frames: int = 4) -> None:
        self._device = device
        self._events = events
        self._queue: DropOldestQueue[CapturedFrame | None] = DropOldestQueue(queue_frames)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.microphone: Microphone | None = None

    def _on_frame(self, pcm: np.ndarray, capture_time: float) -> None:
        # PortAudio thread: no blocking, no raising; the loop does the rest.
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._queue.put, CapturedFrame(pcm, capture_time))

    def _on_error(self, message: str) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._lost, message)

    def _lost(self, message: str) -> None:
        self._events.emit(
            ErrorEvent(
                0.0,
                -1,
                f"microphone lost: {message}",
                hint="reconnect it and start again; the recording is kept",
                fatal=True,
            )
        )
        self._queue.put(None)

    async def frames(self) -> AsyncIterator[CapturedFrame]:
        self._loop = asyncio.get_running_loop()
        self.microphone = Microphone(self._device, on_frame=self._on_frame, on_error=self._on_error)
        with self.microphone:
            reported = 0  # of the queue's drops: every one dropped a frame just before
            while (frame := await self._queue.get()) is not None:  # the oldest still queued
                dropped, reported = self._queue.dropped - reported, self._queue.dropped
                yield dataclasses.replace(frame, dropped_before=dropped) if dropped else frame


class SpeakerSink:
    def __init__(self, speaker: Speaker) -> None:
        self.speaker = speaker

    def play(self, pcm: np.ndarray) -> None:
        self.speaker.write(pcm)

    def buffered_seconds(self) -> float:
        return self.speaker.render_delay

    def counters(self) -> dict[str, int]:
        return {
            "underruns": self.speaker.underruns,
            "overruns": self.speaker.overruns,
            "xruns": self.speaker.xruns,
        }


@contextlib.contextmanager
def open_devices(
    session: DeviceUser, format: AudioFormat, on_speaker_lost: Callable[[str], None]
) -> Iterator[tuple[AudioSource, AudioSink, CollectingSink | None]]:
    """The source and sink of a conversation in `format`, falling back to a demo when there
    are none; `session.devices` gets their names."""
    names = session.devices
    try:
        microphone = find_device(session.input_device, "input")
    except AudioDeviceError as exc:
        if session.input_device is not None:
            raise
        session.notice(str(exc))
        audio, names["input"] = demo_user_signal(format.sample_rate)
        session.notice(
            f"no microphone, so a demo utterance plays as your voice: {names['input']} "
            "(pass --input-device to choose one)"
        )
        source: AudioSource = PacedFileSource(
            audio, format.frame_size, format.sample_rate, session.clock
        )
    else:
        source = MicrophoneSource(microphone, session.events)
        names["input"] = microphone.describe()
    try:
        speaker_device = find_device(session.output_device, "output")
    except AudioDeviceError as exc:
        if session.output_device is not None:
            raise
        session.notice(str(exc))
        session.notice(f"no speaker: the reply goes to {session.demo_out}")
        collected = CollectingSink()
        names["output"] = f"file {session.demo_out}"
        yield source, collected, collected
        return
    names["output"] = speaker_device.describe()
    # The speaker opens first: frames the microphone captures meanwhile would pile up.
    with Speaker(speaker_device, on_error=on_speaker_lost) as speaker:
        yield source, SpeakerSink(speaker), None


def open_echo_canceller(
    session: DeviceUser, format: AudioFormat, source: AudioSource, sink: AudioSink
) -> EchoCanceller | None:
    """The canceller for a microphone that hears a speaker; None where there is no echo (a demo
    voice, a reply going to a file) or no canceller (said once, with what to do)."""
    if not isinstance(source, MicrophoneSource) or not isinstance(sink, SpeakerSink):
        session.devices["echo"] = "off (no microphone and speaker pair)"
        return None
    speaker = sink.speaker

    def device_latency() -> float:
        microphone = source.microphone
        return (speaker.latency or 0.0) + ((microphone.latency or 0.0) if microphone else 0.0)

    try:
        echo = EchoCanceller(EchoConfig(format.sample_rate, format.frame_size), device_latency)
    except EchoCancelError as exc:
        session.notice(f"echo cancellation is off: {exc}")
        session.devices["echo"] = "off (unavailable)"
        return None
    session.devices["echo"] = "WebRTC AEC3"
    return echo
