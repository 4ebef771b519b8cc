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

from app.core.engine import Engine
from app.core.events import ErrorEvent, Event, EventFanout, EventSink, StateEvent, TextEvent
from app.core.models import add_model_arguments, load_from_args
from app.core.recording import Recorder
from app.core.runtime import (
    AudioSink,
    AudioSource,
    CapturedFrame,
    CollectingSink,
    Conversation,
    DropOldestQueue,
    PacedFileSource,
    RealClock,
)
from app.core.timing import Timings
from audio_io.devices import DeviceInfo, Microphone, Speaker, find_device
from audio_io.errors import AudioDeviceError
from audio_io.files import write_wav
from model import SamplingParams


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
    parser.add_argument(
        "--record-dir",
        type=Path,
        default=Path("recordings"),
        metavar="DIR",
        help="where the TUI's record key (c) records: DIR/<date-time> (default %(default)s)",
    )
    from . import remote  # remote imports this module: import here, not at the top

    remote.add_arguments(parser)
    parser.add_argument(
        "--no-tui",
        action="store_true",
        help="print the inner monologue instead of the full-screen TUI (also when stdout is "
        "not a terminal)",
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
    session: TalkSession, on_speaker_lost: Callable[[str], None]
) -> Iterator[tuple[AudioSource, AudioSink, CollectingSink | None]]:
    """The source and sink of a conversation, falling back to a demo when there are none."""
    engine, names = session.engine, session.devices
    try:
        microphone = find_device(session.input_device, "input")
    except AudioDeviceError as exc:
        if session.input_device is not None:
            raise
        session.notice(str(exc))
        session.notice(
            "no microphone, so a demo utterance plays as your voice "
            "(pass --input-device to choose one)"
        )
        audio = generated_user_signal(6.0, engine.sample_rate)
        source: AudioSource = PacedFileSource(
            audio, engine.frame_size, engine.sample_rate, session.clock
        )
        names["input"] = "demo utterance (generated)"
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


class TalkSession:
    """A live conversation with its devices, recording and controls.

    What a front end drives: the terminal printer below, the TUI, and (through the same calls)
    a remote server's session. Controls may be called from the event loop at any time.
    """

    def __init__(
        self,
        engine: Engine,
        input_device: str | None = None,
        output_device: str | None = None,
        record: Path | None = None,
        demo_out: Path = Path("antiphon-talk.wav"),
        notices: Callable[[str], None] | None = None,
    ) -> None:
        self.engine = engine
        self.input_device = input_device
        self.output_device = output_device
        self.demo_out = demo_out
        self.clock = RealClock()
        self.events = EventFanout()
        self.devices: dict[str, str] = {}
        self.recorder: Recorder | None = None
        self.recording_started: float | None = None
        self._initial_record = record
        self._notices = notices or (lambda text: print(f"antiphon: {text}", file=sys.stderr))
        self._conversation: Conversation | None = None
        self._muted = False
        self._sampling = engine.sampling

    @property
    def model_name(self) -> str:
        return self.engine.model.name

    @property
    def sampling(self) -> SamplingParams:
        """The latest parameters asked for (applied between two frames)."""
        return self._sampling

    @property
    def muted(self) -> bool:
        return self._muted

    @muted.setter
    def muted(self, value: bool) -> None:
        # Kept here too, so a key pressed while the devices are still opening is not lost.
        self._muted = value
        if self._conversation is not None:
            self._conversation.muted = value
            self.events.emit(
                StateEvent(self._conversation.elapsed, -1, "muted" if value else "unmuted")
            )

    def notice(self, text: str) -> None:
        self._notices(text)

    def reset(self) -> None:
        if self._conversation is not None:
            self._conversation.request_reset()

    def set_sampling(self, params: SamplingParams) -> None:
        self._sampling = params
        if self._conversation is not None:
            self._conversation.request_sampling(params)

    def start_recording(self, folder: Path) -> None:
        recorder = Recorder(
            folder, self.engine.format, self.engine.model, self._sampling, self.devices
        )
        self.recorder, self.recording_started = recorder, self.clock.now()
        self.events.sinks.append(recorder)
        if self._conversation is not None:
            self._conversation.recorder = recorder

    def stop_recording(self) -> Path | None:
        recorder, self.recorder = self.recorder, None
        if recorder is None:
            return None
        if self._conversation is not None:
            self._conversation.recorder = None
            recorder.close(self._conversation.timings.summary(self.engine.frame_duration))
        else:
            recorder.close()
        self.events.sinks.remove(recorder)
        self.recording_started = None
        return recorder.folder

    async def run(self) -> Timings:
        """Open the devices and converse until the source ends or the task is cancelled."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def speaker_lost(message: str) -> None:  # PortAudio's thread
            def stop() -> None:
                self.events.emit(
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

        with _devices(self, speaker_lost) as (source, sink, collected):
            conversation = Conversation(
                self.engine, source, sink, self.events, self.clock, self.recorder
            )
            conversation.muted = self._muted
            if self._sampling != self.engine.sampling:
                conversation.request_sampling(self._sampling)
            self._conversation = conversation
            if self._initial_record is not None and self.recorder is None:
                self.start_recording(self._initial_record)
            try:
                return await conversation.run()
            finally:
                try:
                    self.stop_recording()
                finally:  # a recording that cannot be closed must not cost the reply too
                    if collected is not None:
                        write_wav(self.demo_out, collected.audio(), self.engine.sample_rate)
                        self.notice(f"wrote the reply to {self.demo_out}")


def run(args: argparse.Namespace) -> int:
    use_tui = not args.no_tui and sys.stdout.isatty()
    if args.remote:
        return _run_remote(args, use_tui)
    model = load_from_args(args)
    if model.notice and not use_tui:
        print(f"antiphon: {model.notice}", file=sys.stderr)
    engine = Engine(model)
    engine.warm_up()
    if not use_tui:
        session = TalkSession(
            engine, args.input_device, args.output_device, args.record, args.demo_out
        )
        session.events.sinks.append(TerminalPrinter())
        return asyncio.run(_talk_in_terminal(session))

    from .tui import logging_into, make_app  # lazily: the headless server never loads textual

    session = TalkSession(
        engine,
        args.input_device,
        args.output_device,
        args.record,
        args.demo_out,
        notices=lambda text: tui.notice(text),  # `tui` exists before the session runs
    )
    tui = make_app(session, args.record_dir)
    if model.notice:
        tui.notice(model.notice)
    with logging_into(tui):
        tui.run()
    return tui.return_code or 0


def _run_remote(args: argparse.Namespace, use_tui: bool) -> int:
    """The model on a server (`antiphon serve`), the microphone and speaker here."""
    from . import remote  # remote imports this module

    if not use_tui:
        return remote.run(args)
    from .tui import logging_into, make_app

    session = remote.session_from_args(args, notices=lambda text: tui.notice(text))
    tui = make_app(session, args.record_dir)
    with logging_into(tui):
        tui.run()
    return tui.return_code or 0


async def _talk_in_terminal(session: TalkSession) -> int:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    print(
        f"antiphon: {session.model_name}"
        + (f" | recording to {session._initial_record}" if session._initial_record else "")
        + " | Ctrl-C to stop",
        file=sys.stderr,
    )
    run = asyncio.create_task(session.run())
    timings: Timings | None
    try:
        timings = await asyncio.shield(run)
    except asyncio.CancelledError:
        run.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run
        timings = session._conversation.timings if session._conversation else None
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    print()
    if timings is not None:
        figures = timings.summary(session.engine.frame_duration)
        compute = figures.get("compute_ms") or {"median": 0.0}
        print(
            f"antiphon: {figures['frames']} frames, compute median "
            f"{compute['median']:.1f} ms (real-time factor "
            f"{figures.get('real_time_factor') or 0:.2f}), {timings.counters['dropped_input']} "
            "microphone frames dropped",
            file=sys.stderr,
        )
    return 0
