"""The conversation runtime with a tiny random model, a paced source and a virtual clock."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import torch

from app.core.engine import Engine, StepResult
from app.core.events import (
    CAUGHT_UP,
    SLOWER_THAN_REAL_TIME,
    ErrorEvent,
    EventLog,
    FrameStats,
    StateEvent,
)
from app.core.models import random_model
from app.core.runtime import (
    CollectingSink,
    Conversation,
    DropOldestQueue,
    PacedFileSource,
    RealClock,
    VirtualClock,
)
from model import SamplingParams


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(random_model(torch.device("cpu"), SamplingParams.greedy()))


def _signal(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * 24_000)) / 24_000
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def _converse(engine: Engine, audio: np.ndarray, clock=None, **kwargs):
    clock = clock or VirtualClock()
    source = PacedFileSource(audio, engine.frame_size, engine.sample_rate, clock)
    sink, events = CollectingSink(), EventLog()
    conversation = Conversation(engine, source, sink, events, clock, **kwargs)
    summary = asyncio.run(conversation.run())
    return conversation, summary, sink, events


def test_every_frame_is_captured_processed_and_played(engine: Engine) -> None:
    engine.reset()
    audio = _signal(2.0)  # 25 frames
    _, summary, sink, events = _converse(engine, audio, input_queue_frames=1000)
    assert summary.frames == 25 and summary.counters["dropped_input"] == 0
    assert len(sink.audio()) == 25 * engine.frame_size
    stats = events.of(FrameStats)
    assert [s.frame for s in stats] == list(range(25))
    assert all(s.compute_ms > 0 and s.latency_ms is not None for s in stats)
    # (on a busy machine the model may fall behind and catch up: a condition, not a state)
    states = [e.state for e in events.of(StateEvent) if e.state != CAUGHT_UP]
    assert states == ["started", "stopped"]


def test_the_same_audio_gives_the_same_reply_as_stepping_the_engine_directly(
    engine: Engine,
) -> None:
    audio = _signal(1.2)
    engine.reset()
    direct = np.concatenate(
        [
            engine.step(audio[i : i + engine.frame_size]).pcm
            for i in range(0, len(audio) - engine.frame_size + 1, engine.frame_size)
        ]
    )
    engine.reset()
    _, _, sink, _ = _converse(engine, audio, input_queue_frames=1000)
    np.testing.assert_array_equal(sink.audio()[: len(direct)], direct)


class SlowEngine:
    """An engine whose step takes longer than a frame (a model too big for the machine)."""

    def __init__(self, engine: Engine, seconds: float) -> None:
        self.inner, self.seconds = engine, seconds
        self.frame_size, self.sample_rate = engine.frame_size, engine.sample_rate
        self.frame_duration = engine.frame_duration

    def step(self, pcm: np.ndarray) -> StepResult:
        time.sleep(self.seconds)
        result = self.inner.step(pcm)
        return StepResult(
            result.pcm,
            result.text_token,
            result.text,
            result.encode_ms,
            result.lm_ms + 1000 * self.seconds,
            result.decode_ms,
        )

    def reset(self) -> None:
        self.inner.reset()


def test_a_step_slower_than_real_time_is_reported_and_audio_is_dropped(engine: Engine) -> None:
    slow = SlowEngine(engine, seconds=0.12)  # 120 ms of compute for an 80 ms frame
    started = time.monotonic()
    _, summary, _, events = _converse(
        slow,  # type: ignore[arg-type]
        _signal(1.6),
        clock=RealClock(),  # type: ignore[arg-type]
        input_queue_frames=2,
    )
    errors = events.of(ErrorEvent)
    assert errors and "slower than real time" in errors[0].message and errors[0].hint
    # the clock was kept: old frames went, latency stayed bounded
    assert summary.counters["dropped_input"] > 0
    assert summary.frames + summary.counters["dropped_input"] == 20
    assert summary.latency_ms.maximum < 1000 * (2 + 1) * 0.12 + 200
    assert time.monotonic() - started < 1.6 + 1.0


class ReportedCompute:
    """The engine, reporting the compute times it is given: a machine that is busy for a while
    (the warning's start and end then do not depend on how busy the test machine is)."""

    def __init__(self, engine: Engine, compute_ms: list[float]) -> None:
        self.inner, self.compute_ms = engine, compute_ms
        self.frame_size, self.sample_rate = engine.frame_size, engine.sample_rate
        self.frame_duration = engine.frame_duration

    def step(self, pcm: np.ndarray) -> StepResult:
        result = self.inner.step(pcm)
        ms = self.compute_ms.pop(0) if self.compute_ms else 20.0
        return StepResult(result.pcm, result.text_token, result.text, 0.0, ms, 0.0)

    def reset(self) -> None:
        self.inner.reset()


def test_a_model_that_keeps_up_again_says_so(engine: Engine) -> None:
    """The warning is a condition: its end is reported, so the TUI can take the alert down."""
    engine.reset()
    busy = ReportedCompute(engine, [120.0] * 8)  # 120 ms for 80 ms frames, then 20 ms
    _, _, _, events = _converse(busy, _signal(2.4), input_queue_frames=1000)  # type: ignore[arg-type]
    (error,) = events.of(ErrorEvent)
    assert error.code == SLOWER_THAN_REAL_TIME and error.frame < 8
    caught_up = [e for e in events.of(StateEvent) if e.state == CAUGHT_UP]
    assert len(caught_up) == 1 and 8 <= caught_up[0].frame < 12
    assert "keeps up again" in caught_up[0].detail


def test_mute_and_reset_take_effect_between_frames(engine: Engine) -> None:
    engine.reset()
    clock = VirtualClock()
    source = PacedFileSource(_signal(1.0), engine.frame_size, engine.sample_rate, clock)
    events = EventLog()
    conversation = Conversation(
        engine, source, CollectingSink(), events, clock, input_queue_frames=1000
    )
    fed: list[np.ndarray] = []
    step = engine.step

    def spy(pcm: np.ndarray) -> StepResult:
        fed.append(pcm.copy())
        return step(pcm)

    engine.step = spy  # type: ignore[method-assign]
    try:
        conversation.muted = True
        conversation.request_reset()
        asyncio.run(conversation.run())
    finally:
        del engine.step
    assert all(not pcm.any() for pcm in fed)  # muted: the model heard silence
    assert "reset" in [e.state for e in events.of(StateEvent)]


def test_cancelling_a_conversation_shuts_it_down_cleanly(engine: Engine) -> None:
    async def main() -> list[str]:
        clock = RealClock()
        source = PacedFileSource(_signal(30.0), engine.frame_size, engine.sample_rate, clock)
        events = EventLog()
        conversation = Conversation(engine, source, CollectingSink(), events, clock)
        task = asyncio.create_task(conversation.run())
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return [e.state for e in events.of(StateEvent)]

    assert asyncio.run(main()) == ["started", "stopped"]


def test_drop_oldest_queue_keeps_the_newest() -> None:
    async def main() -> tuple[list[int], int]:
        queue: DropOldestQueue[int] = DropOldestQueue(2)
        for i in range(5):
            queue.put(i)
        return [await queue.get(), await queue.get()], queue.dropped

    assert asyncio.run(main()) == ([3, 4], 3)


class FailingSource:
    """A microphone that fails to open (busy, unsupported rate)."""

    async def frames(self):
        from audio_io.errors import AudioDeviceError

        raise AudioDeviceError("microphone 'USB' is busy")
        yield  # an async generator


def test_a_failing_task_raises_its_own_error_not_a_group(engine: Engine) -> None:
    from audio_io.errors import AudioDeviceError

    conversation = Conversation(
        engine, FailingSource(), CollectingSink(), EventLog(), VirtualClock()
    )
    with pytest.raises(AudioDeviceError, match="busy"):
        asyncio.run(conversation.run())
