"""A live conversation with the model on this machine: its devices, recording and controls.

    microphone ─► Conversation (app.core.runtime: capture, inference, playback) ─► speaker
                        └─► events ─► the terminal printer or the TUI, and a recording

`TalkSession` is what a front end drives (app/talk/cli.py's printer, the TUI); a model on a
server is driven through the same calls by `app.talk.remote.RemoteTalkSession`.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path

from app.core.engine import Engine
from app.core.events import ErrorEvent, EventFanout, StateEvent
from app.core.recording import WRITE_FAILED_HINT, Recorder, RecordingError
from app.core.runtime import Conversation, RealClock
from app.core.timing import Timings
from audio_io.echo import EchoCanceller
from audio_io.files import write_wav
from model import SamplingParams

from .devices import open_devices, open_echo_canceller


class TalkSession:
    """A live conversation with its devices, recording and controls.

    What a front end drives (the terminal printer, the TUI). Controls may be called from the
    event loop at any time.
    """

    def __init__(
        self,
        engine: Engine,
        input_device: str | None = None,
        output_device: str | None = None,
        record: Path | None = None,
        demo_out: Path = Path("antiphon-talk.wav"),
        notices: Callable[[str], None] | None = None,
        *,
        echo_cancel: bool = True,
        keep_microphone: bool = False,
    ) -> None:
        self.engine = engine
        self.echo_cancel = echo_cancel  # remove the speaker's echo from the microphone
        self.keep_microphone = keep_microphone  # recordings keep the raw microphone too
        self.input_device = input_device
        self.output_device = output_device
        self.demo_out = demo_out
        self.clock = RealClock()
        self.events = EventFanout()
        self.devices: dict[str, str] = {}
        self.recorder: Recorder | None = None
        self.recording_started: float | None = None
        self.initial_record = record
        self._notices = notices or (lambda text: print(f"antiphon: {text}", file=sys.stderr))
        self._conversation: Conversation | None = None
        self._muted = False
        self._sampling = engine.sampling

    @property
    def model_name(self) -> str:
        return self.engine.model.name

    @property
    def timings(self) -> Timings | None:
        """The conversation's figures so far (None before it has started)."""
        return self._conversation.timings if self._conversation is not None else None

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
            folder,
            self.engine.format,
            self.engine.model,
            self._sampling,
            self.devices,
            keep_microphone=self.keep_microphone,
        )
        self.recorder, self.recording_started = recorder, self.clock.now()
        if self._conversation is not None:  # from this frame on, its own frame 0 and counters
            self._conversation.attach_recorder(recorder)
        self.events.sinks.append(recorder)

    def stop_recording(self) -> Path | None:
        recorder, self.recorder = self.recorder, None
        if recorder is None:
            return None
        self.events.sinks.remove(recorder)
        self.recording_started = None
        conversation = self._conversation
        try:
            if conversation is not None:
                conversation.recorder = None
                try:  # frames captured and dropped to keep up, up to now: silence (its time)
                    recorder.pad_to(conversation.frame)
                finally:  # a full disk must not leave it unclosed
                    recorder.update_counters(conversation.counters())
                    recorder.close(recorder.summary())  # of its frames, not the session's
            else:
                recorder.close()
        except RecordingError as exc:  # a full disk: said, and the conversation goes on
            self.notice(f"{exc} ({WRITE_FAILED_HINT})")
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

        with open_devices(self, self.engine.format, speaker_lost) as (source, sink, collected):
            echo: EchoCanceller | None = None
            if self.echo_cancel:
                echo = open_echo_canceller(self, self.engine.format, source, sink)
            conversation = Conversation(
                self.engine, source, sink, self.events, self.clock, self.recorder, echo=echo
            )
            conversation.muted = self._muted
            if self._sampling != self.engine.sampling:
                conversation.request_sampling(self._sampling)
            self._conversation = conversation
            if self.initial_record is not None and self.recorder is None:
                self.start_recording(self.initial_record)
            try:
                return await conversation.run()
            finally:
                try:
                    self.stop_recording()
                finally:  # a recording that cannot be closed must not cost the reply too
                    if collected is not None:
                        write_wav(self.demo_out, collected.audio(), self.engine.sample_rate)
                        self.notice(f"wrote the reply to {self.demo_out}")
