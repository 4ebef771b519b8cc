"""A real-time conversation: capture, inference and playback as three tasks of one TaskGroup.

    source ─► capture ─► input queue ─► inference ─► output queue ─► playback ─► sink
              task       (bounded,       task         (bounded,       task       (jitter buffer:
                         drop oldest)    (Engine.step  drop oldest)              silence on
                                         in the torch                            underrun)
                                         thread)

Drop policies keep the clock: when a step is slower than real time, the oldest microphone frames
are dropped (and counted) instead of piling up, so latency stays bounded in a long conversation;
the speaker's jitter buffer plays silence on underrun and drops audio when its lag grows.
The clock is injectable: tests run a conversation faster than real time with `VirtualClock`.

Frames are numbered as they are captured: the index is the conversation's frame clock (events'
`frame`), so a dropped microphone frame leaves a gap in it, and a recording fills the gap with
silence (app/core/recording.py): the recording keeps the conversation's time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import statistics
import time
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import numpy as np

from audio_io.echo import EchoCanceller, EchoFrame
from model import SamplingParams

from .audio import level_db
from .engine import Engine, StepResult
from .events import (
    CAUGHT_UP,
    SLOWER_THAN_REAL_TIME,
    ErrorEvent,
    EventSink,
    FrameStats,
    StateEvent,
    monologue_event,
)
from .recording import WRITE_FAILED_HINT, Origin, RecordingError
from .timing import Timings

log = logging.getLogger(__name__)

T = TypeVar("T")


class Clock(Protocol):
    def now(self) -> float: ...

    async def sleep_until(self, deadline: float) -> None: ...


class RealClock:
    def now(self) -> float:
        return time.monotonic()

    async def sleep_until(self, deadline: float) -> None:
        await asyncio.sleep(max(0.0, deadline - self.now()))


class VirtualClock:
    """Time that jumps forward instead of waiting: a paced source runs as fast as it can."""

    def __init__(self) -> None:
        self._now = 0.0

    def now(self) -> float:
        return self._now

    async def sleep_until(self, deadline: float) -> None:
        self._now = max(self._now, deadline)
        await asyncio.sleep(0)


@dataclass(frozen=True)
class CapturedFrame:
    pcm: np.ndarray  # [frame_size] float32, 24 kHz mono
    time: float  # when it was captured, on the conversation's clock
    # frames the source captured just before this one and dropped to keep up (its own bounded
    # queue): they keep their places on the conversation's clock, as silence in a recording
    dropped_before: int = 0


class AudioSource(Protocol):
    """Where the user's audio comes from (a microphone, a file played in real time, MQTT)."""

    def frames(self) -> AsyncIterator[CapturedFrame]: ...


class AudioSink(Protocol):
    """Where the assistant's audio goes. `play` must not block."""

    def play(self, pcm: np.ndarray) -> None: ...

    def buffered_seconds(self) -> float:
        """Audio handed over but not yet heard (jitter buffer and device), for latency."""
        ...

    def counters(self) -> dict[str, int]:
        """Cumulative `underruns`, `overruns`, `xruns` where the sink knows them."""
        ...


class DropOldestQueue(Generic[T]):
    """A bounded asyncio queue whose `put` never waits: when full, the oldest item goes."""

    def __init__(self, maxsize: int) -> None:
        self._queue: asyncio.Queue[T] = asyncio.Queue(maxsize)
        self.dropped = 0

    def put(self, item: T) -> None:
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(item)

    async def get(self) -> T:
        return await self._queue.get()

    def qsize(self) -> int:
        return self._queue.qsize()


class FrameRecorder(Protocol):
    def start_at(self, origin: Origin) -> None: ...

    def write_frame(
        self,
        assistant: np.ndarray,
        user: np.ndarray,
        microphone: np.ndarray | None = None,
        frame: int | None = None,
    ) -> None: ...


class Conversation:
    """One conversation between a source, the engine and a sink, on one clock.

    Controls (from any task of the loop): `muted`, `request_reset()`, `request_sampling()`.
    They take effect between two frames, in the torch thread.

    With an `echo` canceller, the model hears the microphone with the speaker's echo removed:
    each reply frame goes on the canceller's timeline at the time it will sound (now plus what
    the sink still buffers), and each microphone frame is cleaned against what was sounding
    while it was captured, in the torch thread, before the step.
    """

    def __init__(
        self,
        engine: Engine,
        source: AudioSource,
        sink: AudioSink,
        events: EventSink,
        clock: Clock | None = None,
        recorder: FrameRecorder | None = None,
        input_queue_frames: int = 4,
        output_queue_frames: int = 4,
        echo: EchoCanceller | None = None,
    ) -> None:
        self.engine = engine
        self.echo = echo
        self.source = source
        self.sink = sink
        self.events = events
        self.clock = clock or RealClock()
        self.recorder = recorder
        self.muted = False
        self.timings = Timings()  # the frames played, and the queues' counters at the end
        self._recent_ms: deque[float] = deque(maxlen=5)  # compute of the latest steps
        # (the frame's index on the conversation's clock, the frame)
        self._inputs: DropOldestQueue[tuple[int, CapturedFrame] | None] = DropOldestQueue(
            input_queue_frames
        )
        self._outputs: DropOldestQueue[_Heard | None] = DropOldestQueue(output_queue_frames)
        self._source_dropped = 0  # frames the source dropped (CapturedFrame.dropped_before)
        self._reset_requested = False
        self._sampling_requested: SamplingParams | None = None
        self._start = 0.0
        self._running = False
        self._frame = 0  # the index of the frame being processed, or of the next one
        self._slow_reported_at = float("-inf")
        self._slow = False  # reported slower than real time, and not yet back under budget

    def request_reset(self) -> None:
        self._reset_requested = True

    def request_sampling(self, params: SamplingParams) -> None:
        self._sampling_requested = params

    @property
    def elapsed(self) -> float:
        return self.clock.now() - self._start

    def counters(self) -> dict[str, int]:
        """The running totals of COUNTERS (app.core.timing) as they stand now."""
        counters = self.sink.counters()
        return {
            "dropped_input": self._dropped_input,
            "underruns": counters.get("underruns", 0),
            "overruns": counters.get("overruns", 0) + self._outputs.dropped,
            "xruns": counters.get("xruns", 0),
        }

    @property
    def frame(self) -> int:
        """The conversation's index of the frame being processed, or of the next one."""
        return self._frame

    def attach_recorder(self, recorder: FrameRecorder) -> None:
        """Record from the next frame written on: the recording's frame 0, time 0 and counters
        start here (call it on the loop; the frame being processed is the first recorded)."""
        if self._running:  # before the conversation runs, its start is the recording's
            recorder.start_at(Origin(self.elapsed, self._frame, self.counters()))
        self.recorder = recorder

    async def run(self) -> Timings:
        """Run until the source ends (or the task is cancelled); returns the figures."""
        self._start, self._running = self.clock.now(), True
        self.events.emit(StateEvent(0.0, 0, "started"))
        torch_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="antiphon-torch")
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._capture())
                group.create_task(self._infer(torch_thread))
                group.create_task(self._playback())
        except BaseExceptionGroup as failed:
            # One task failed and the others were cancelled: raise that one error itself, so
            # callers can catch it by type (a lost device, a full disk), not a group.
            if len(failed.exceptions) == 1:
                raise failed.exceptions[0] from None
            raise
        finally:
            # A step still running finishes in its thread; wait so torch is idle at exit.
            torch_thread.shutdown(wait=True, cancel_futures=True)
            self.timings.counters.update(self.counters())
            self.events.emit(StateEvent(self.elapsed, self._frame, "stopped"))
        return self.timings

    @property
    def _dropped_input(self) -> int:
        """Microphone frames dropped to keep up: by the source, or by the input queue."""
        return self._source_dropped + self._inputs.dropped

    async def _capture(self) -> None:
        index = 0
        async for frame in self.source.frames():
            index += frame.dropped_before
            self._source_dropped += frame.dropped_before
            self._inputs.put((index, frame))
            index += 1
        self._inputs.put(None)  # end of input (never dropped: the queue just lost its oldest)

    def _step(
        self, frame: CapturedFrame, muted: bool, reset: bool, sampling: SamplingParams | None
    ) -> tuple[np.ndarray, EchoFrame | None, StepResult]:
        """Runs in the torch thread: the controls taken for this frame, the echo removed, then
        the frame. Returns what the model heard, the canceller's figures, the step's result."""
        if reset:
            self.engine.reset()
        if sampling is not None:
            self.engine.set_sampling(sampling)
        echo = self.echo.cancel(frame.pcm, frame.time) if self.echo is not None else None
        heard = echo.pcm if echo is not None else frame.pcm
        if muted:
            heard = np.zeros(self.engine.frame_size, dtype=np.float32)
        return heard, echo, self.engine.step(heard)

    async def _infer(self, torch_thread: ThreadPoolExecutor) -> None:
        loop = asyncio.get_running_loop()
        try:
            while (item := await self._inputs.get()) is not None:
                index, frame = item
                self._frame = index
                # Controls are taken here, on the loop, so none is lost or applied unreported.
                reset, self._reset_requested = self._reset_requested, False
                sampling, self._sampling_requested = self._sampling_requested, None
                pcm, echo, result = await loop.run_in_executor(
                    torch_thread, self._step, frame, self.muted, reset, sampling
                )
                now = self.elapsed
                # First, so that its events follow it; frames dropped before it: silence there.
                if self.recorder is not None:
                    self._record(result.pcm, pcm, frame.pcm, index, now)
                if reset:
                    self.events.emit(StateEvent(now, index, "reset"))
                if sampling is not None:  # detail: the parameters, as a node's event has them
                    detail = json.dumps(dataclasses.asdict(sampling), separators=(",", ":"))
                    self.events.emit(StateEvent(now, index, "sampling", detail))
                if result.text:
                    self.events.emit(
                        monologue_event(now, index, result.text_token, result.text, result.heard)
                    )
                self._recent_ms.append(result.compute_ms)
                self._report_if_slow(now)
                self._outputs.put(_Heard(index, frame, result, echo))
                self._frame = index + 1
        finally:
            self._outputs.put(None)

    def _record(
        self, reply: np.ndarray, heard: np.ndarray, raw: np.ndarray, index: int, now: float
    ) -> None:
        """A recording that cannot be written (a full disk) stops; the conversation goes on.
        Its owner still closes it (TalkSession.stop_recording)."""
        assert self.recorder is not None
        try:
            self.recorder.write_frame(reply, heard, raw, frame=index)
        except RecordingError as exc:
            self.recorder = None
            message = f"recording stopped: {exc}"
            self.events.emit(ErrorEvent(now, index, message, hint=WRITE_FAILED_HINT))

    def _report_if_slow(self, now: float) -> None:
        """Warn (at most every 5 s) when the recent frames' median is over budget: one slow
        frame (a first step, a hiccup) is absorbed by the queues and is no news. Say so when
        it is back under budget, so that the warning can go."""
        frame_ms = 1000 * self.engine.frame_duration
        recent = statistics.median(self._recent_ms)
        if recent > frame_ms and now - self._slow_reported_at > 5.0:
            self._slow_reported_at = now
            self._slow = True
            self.events.emit(
                ErrorEvent(
                    now,
                    self._frame,
                    f"the model is slower than real time ({recent:.0f} ms for a "
                    f"{frame_ms:.0f} ms frame): audio is being dropped to keep up",
                    hint="use a GPU (--device cuda), a smaller model, or close other programs",
                    code=SLOWER_THAN_REAL_TIME,
                )
            )
        elif self._slow and recent < 0.9 * frame_ms:
            self._slow = False
            detail = f"the model keeps up again ({recent:.0f} ms for a {frame_ms:.0f} ms frame)"
            self.events.emit(StateEvent(now, self._frame, CAUGHT_UP, detail))

    async def _playback(self) -> None:
        frame_ms = 1000 * self.engine.frame_duration
        while (item := await self._outputs.get()) is not None:
            index, captured, result, echo = item.index, item.captured, item.result, item.echo
            if self.echo is not None:  # before `play`: what is buffered sounds first
                self.echo.played(result.pcm, self.clock.now() + self.sink.buffered_seconds())
            self.sink.play(result.pcm)
            latency = 1000 * (self.clock.now() - captured.time + self.sink.buffered_seconds())
            counters = self.sink.counters()
            stats = FrameStats(
                self.elapsed,
                index,
                encode_ms=result.encode_ms,
                lm_ms=result.lm_ms,
                decode_ms=result.decode_ms,
                compute_ms=result.compute_ms,
                real_time_factor=result.compute_ms / frame_ms,
                dropped_input=self._dropped_input,
                underruns=counters.get("underruns", 0),
                overruns=counters.get("overruns", 0) + self._outputs.dropped,
                xruns=counters.get("xruns", 0),
                latency_ms=latency,
                input_level_db=level_db(captured.pcm),
                output_level_db=level_db(result.pcm),
                echo_cancel=self.echo is not None,
                erle_db=echo.erle_db if echo is not None else None,
            )
            self.timings.add_stats(stats)
            self.events.emit(stats)


@dataclass(frozen=True)
class _Heard:
    """A frame through inference, on its way to the speaker."""

    index: int  # on the conversation's clock
    captured: CapturedFrame  # as the microphone gave it
    result: StepResult
    echo: EchoFrame | None  # the canceller's figures for the frame, when it runs


class PacedFileSource:
    """A recorded signal played as if it were a microphone: one frame per frame duration."""

    def __init__(self, audio: np.ndarray, frame_size: int, sample_rate: int, clock: Clock) -> None:
        self.audio = np.pad(audio.astype(np.float32), (0, -len(audio) % frame_size))
        self.frame_size = frame_size
        self.frame_duration = frame_size / sample_rate
        self.clock = clock

    async def frames(self) -> AsyncIterator[CapturedFrame]:
        start = self.clock.now()
        for i in range(len(self.audio) // self.frame_size):
            # A frame exists once its last sample has been "captured".
            await self.clock.sleep_until(start + (i + 1) * self.frame_duration)
            pcm = self.audio[i * self.frame_size : (i + 1) * self.frame_size]
            yield CapturedFrame(pcm, self.clock.now())


class CollectingSink:
    """Keeps everything played (files, tests); no device, so no buffering."""

    def __init__(self) -> None:
        self.played: list[np.ndarray] = []

    def play(self, pcm: np.ndarray) -> None:
        self.played.append(pcm)

    def buffered_seconds(self) -> float:
        return 0.0

    def counters(self) -> dict[str, int]:
        return {}

    def audio(self) -> np.ndarray:
        return np.concatenate(self.played) if self.played else np.zeros(0, np.float32)
