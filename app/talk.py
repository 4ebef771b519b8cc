"""`antiphon talk`: microphone → model → speaker, the inner monologue printed as it comes.

The sound devices run in PortAudio's threads; their callbacks hand frames to the event loop
with `call_soon_threadsafe` and never block. With no microphone on the machine (a server, CI),
`talk` says so and plays a demo utterance as the user's voice instead, in real time, writing
the reply to a WAV when there is no speaker either.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import numpy as np

from audio_io.devices import DeviceInfo, Microphone, Speaker, find_device
from audio_io.errors import AudioDeviceError
from audio_io.files import write_wav

from .engine import Engine
from .events import ErrorEvent, Event, EventFanout, EventSink, TextEvent
from .models import add_model_arguments, load_from_args
from .recording import Recorder
from .runtime import (
    AudioSink,
    AudioSource,
    CapturedFrame,
    CollectingSink,
    Conversation,
    DropOldestQueue,
    PacedFileSource,
    RealClock,
)


def generated_user_signal(seconds: float, sample_rate: int) -> np.ndarray:
    """Two voiced 'utterances' (a gliding harmonic tone with syllable rhythm) and pauses."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    pitch = 140 + 40 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 6))
    syllables = np.clip(np.sin(2 * np.pi * 4 * t), 0, None)
    speaking = ((t % 3.0) < 1.6).astype(np.float64)  # 1.6 s of speech every 3 s
    return (0.25 * voice * syllables * speaking).astype(np.float32)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--input-device", help="microphone: index or name (see antiphon devices)")
    parser.add_argument("--output-device", help="speaker: index or name")
    parser.add_argument("--record", type=Path, metavar="DIR", help="record the session here")
    parser.add_argument(
        "--demo-out",
        type=Path,
        default=Path("antiphon-talk.wav"),
        help="where the reply goes when there is no speaker",
    )


class MicrophoneSource:
    """Frames from a PortAudio input, handed to the loop from its callback thread.

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
            while (frame := await self._queue.get()) is not None:
                yield frame


class SpeakerSink:
    def __init__(self, speaker: Speaker) -> None:
        self.speaker = speaker

    def play(self, pcm: np.ndarray) -> None:
        self.speaker.write(pcm)

    def buffered_seconds(self) -> float:
        return self.speaker.buffered_seconds + (self.speaker.latency or 0.0)

    def counters(self) -> dict[str, int]:
        return {
            "underruns": self.speaker.underruns,
            "overruns": self.speaker.overruns,
            "xruns": self.speaker.xruns,
        }


class TerminalPrinter:
    """The inner monologue on stdout as it comes; problems on stderr."""

    def emit(self, event: Event) -> None:
        if isinstance(event, TextEvent):
            print(event.text, end="", flush=True)
        elif isinstance(event, ErrorEvent):
            print(
                f"\nantiphon: {event.message}" + (f" ({event.hint})" if event.hint else ""),
                file=sys.stderr,
                flush=True,
            )


@contextlib.contextmanager
def _devices(
    args: argparse.Namespace,
    engine: Engine,
    clock: RealClock,
    events: EventSink,
    on_speaker_lost: Callable[[str], None],
) -> Iterator[tuple[AudioSource, AudioSink, CollectingSink | None, dict[str, str]]]:
    """The source and sink of a conversation, falling back to a demo when there are none."""
    names: dict[str, str] = {}
    try:
        microphone = find_device(args.input_device, "input")
    except AudioDeviceError as exc:
        if args.input_device is not None:
            raise
        print(
            f"antiphon: {exc}\nantiphon: no microphone, so a demo utterance plays as your "
            "voice (pass --input-device to choose one)",
            file=sys.stderr,
        )
        audio = generated_user_signal(6.0, engine.sample_rate)
        source: AudioSource = PacedFileSource(audio, engine.frame_size, engine.sample_rate, clock)
        names["input"] = "demo utterance (generated)"
    else:
        source = MicrophoneSource(microphone, events)
        names["input"] = microphone.describe()
    try:
        speaker_device = find_device(args.output_device, "output")
    except AudioDeviceError as exc:
        if args.output_device is not None:
            raise
        print(
            f"antiphon: {exc}\nantiphon: no speaker: the reply goes to {args.demo_out}",
            file=sys.stderr,
        )
        collected = CollectingSink()
        names["output"] = f"file {args.demo_out}"
        yield source, collected, collected, names
        return
    names["output"] = speaker_device.describe()
    # The speaker opens first: frames the microphone captures meanwhile would pile up.
    with Speaker(speaker_device, on_error=on_speaker_lost) as speaker:
        yield source, SpeakerSink(speaker), None, names


def run(args: argparse.Namespace) -> int:
    model = load_from_args(args)
    if model.tokenizer is None:
        print(
            "antiphon: no bundled model yet: this is a small RANDOMLY INITIALISED model, so it "
            "answers with noise and meaningless tokens; --hf-repo loads Kyutai's models",
            file=sys.stderr,
        )
    engine = Engine(model)
    engine.warm_up()
    return asyncio.run(_talk(args, engine))


async def _talk(args: argparse.Namespace, engine: Engine) -> int:
    clock = RealClock()
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    events = EventFanout(TerminalPrinter())

    def speaker_lost(message: str) -> None:  # PortAudio's thread
        def stop() -> None:
            events.emit(
                ErrorEvent(
                    0.0,
                    -1,
                    f"speaker lost: {message}",
                    hint="reconnect it and start again; the recording is kept",
                    fatal=True,
                )
            )
            task.cancel()

        loop.call_soon_threadsafe(stop)

    with contextlib.ExitStack() as stack:
        source, sink, collected, names = stack.enter_context(
            _devices(args, engine, clock, events, speaker_lost)
        )
        recorder = None
        if args.record is not None:
            recorder = Recorder(args.record, engine.model, engine.sampling, names)
            stack.callback(lambda: recorder.close(summary.as_dict(engine.frame_duration)))
            events.sinks.append(recorder)
        conversation = Conversation(engine, source, sink, events, clock, recorder)
        summary = conversation.summary
        print(
            f"antiphon: {engine.model.name} | in: {names['input']} | out: {names['output']}"
            + (f" | recording to {args.record}" if recorder else "")
            + " | Ctrl-C to stop",
            file=sys.stderr,
        )
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            summary = await conversation.run()
        except asyncio.CancelledError:
            summary = conversation.summary
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        print()
        if collected is not None:
            write_wav(args.demo_out, collected.audio(), engine.sample_rate)
            print(f"antiphon: wrote the reply to {args.demo_out}", file=sys.stderr)
        figures = summary.as_dict(engine.frame_duration)
        print(
            f"antiphon: {figures['frames']} frames, compute median "
            f"{figures['compute_ms_median'] or 0:.1f} ms (real-time factor "
            f"{figures['real_time_factor'] or 0:.2f}), {figures['dropped_input_frames']} "
            "microphone frames dropped",
            file=sys.stderr,
        )
    return 0
