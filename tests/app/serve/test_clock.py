"""The frame clock's rule: when to step the frames that are waiting."""

from __future__ import annotations

import numpy as np
import pytest

from app.serve.clock import step_time
from app.serve.sessions import Arrival, Session
from app.wire.protocol import AudioFrame, SampleFormat, Topics
from model import SamplingParams

FRAME = 1920


def test_a_step_comes_just_after_the_last_phase_of_a_cluster() -> None:
    period = 0.08
    topics = Topics("antiphon", "n1")

    def session(phase: float, queued: bool) -> Session:
        made = Session(
            "id", "o", 0, topics.session("o", "id"), SampleFormat.S16, SamplingParams(), 8
        )
        made.last_arrival = 10 * period + phase
        if queued:
            made.queue.append(Arrival(AudioFrame(0, np.zeros(FRAME)), made.last_arrival))
        return made

    now = 10 * period + 0.020
    # phases 0, 13, 26 and 39 ms: the largest gap follows 39 ms, so the step is at 39 (+margin)
    sessions = [session(p, p <= 0.020) for p in (0.000, 0.013, 0.026, 0.039)]
    ready = [s for s in sessions if s.queue]
    assert step_time(sessions, ready, now, period) == pytest.approx(10 * period + 0.042)
    # a single session is stepped as soon as its frame is in
    alone = [session(0.005, True)]
    assert step_time(alone, alone, now, period) == pytest.approx(10 * period + 0.008)
