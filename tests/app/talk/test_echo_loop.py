"""The echo-loop tests' check that the far end heard what was recorded, on a conversation that
drops a microphone frame, deterministically.

On the JACK loop (test_echo_jack.py) the busy machine stalled the first step for 0.6 s in 4 of
8 runs: the runtime dropped a microphone frame to keep up (counted, `dropped_input`), the
recording held silence in its place (its time is the conversation's), and the far end never
heard it. The old check laid what the far end heard end to end against the recording and failed
there, though nothing recorded was lost. Here the same drop is forced (the first step waits
until the runtime has dropped a frame) on the real runtime and a real recording.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import cast

import numpy as np
import pytest

from app.core.audio import AudioFormat
from app.core.engine import Engine, StepResult
from app.core.events import EventFanout
from app.core.recording import Recorder, read_recording
from app.core.runtime import CollectingSink, Conversation, PacedFileSource, VirtualClock
from model import SamplingParams
from tests.app.talk.echo_loop import (
    FRAME,
    RATE,
    FarEndScript,
    ScriptedFarEnd,
    check_heard_is_recorded,
)


class StalledFarEnd(ScriptedFarEnd):
    """Its first step waits until the runtime has dropped a microphone frame to keep up, as a
    step stalled by a busy machine does."""

    def __init__(self, script: FarEndScript) -> None:
        super().__init__(script)
        self.stalled = threading.Event()

    def step(self, pcm: np.ndarray) -> StepResult:
        assert self.conversation is not None
        if not self.stalled.is_set():
            for _ in range(500):  # the loop keeps capturing meanwhile (virtual clock: at once)
                if self.conversation.counters()["dropped_input"]:
                    break
                threading.Event().wait(0.01)
            self.stalled.set()
        return super().step(pcm)


def _converse_with_a_drop(folder: Path) -> tuple[StalledFarEnd, int]:
    rng = np.random.default_rng(0)
    microphone = (0.1 * rng.standard_normal(12 * FRAME)).astype(np.float32)
    script = FarEndScript(np.zeros(12 * FRAME, np.float32))
    far_end = StalledFarEnd(script)
    clock = VirtualClock()
    source = PacedFileSource(microphone, FRAME, RATE, clock)  # type: ignore[arg-type]
    events = EventFanout()
    with Recorder(folder, AudioFormat(RATE, FRAME), "far end", SamplingParams(), {}) as recorder:
        events.sinks.append(recorder)
        conversation = Conversation(
            cast(Engine, far_end),
            source,
            CollectingSink(),
            events,
            clock,  # type: ignore[arg-type]
            recorder,
        )
        far_end.conversation = conversation
        timings = asyncio.run(conversation.run())
    return far_end, timings.counters["dropped_input"]


def test_frames_dropped_to_keep_up_are_silence_where_the_far_end_heard_nothing(
    tmp_path: Path,
) -> None:
    far_end, dropped = _converse_with_a_drop(tmp_path / "rec")
    assert dropped > 0
    heard = far_end.script.heard
    assert len(heard) == 12 - dropped and far_end.heard_at[0] == 0 and far_end.heard_at[1] > 1
    check_heard_is_recorded(tmp_path / "rec", far_end.heard_at, heard)

    # The old check (what was heard, end to end, against the recording) fails on it.
    user = read_recording(tmp_path / "rec").user
    end_to_end = np.concatenate(heard)[: len(user)]
    assert not np.allclose(end_to_end, user[: len(end_to_end)], atol=1 / 16384)


def test_a_frame_heard_and_not_recorded_fails_the_check(tmp_path: Path) -> None:
    far_end, _ = _converse_with_a_drop(tmp_path / "rec")
    heard = [pcm.copy() for pcm in far_end.script.heard]
    heard[3] += 0.01  # the far end heard something the recording does not hold
    with pytest.raises(AssertionError, match="differs"):
        check_heard_is_recorded(tmp_path / "rec", far_end.heard_at, heard)
    with pytest.raises(AssertionError, match="not silent"):  # a frame heard, said unheard
        check_heard_is_recorded(tmp_path / "rec", far_end.heard_at[1:], far_end.script.heard[1:])
