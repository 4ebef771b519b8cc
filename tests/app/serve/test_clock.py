"""The frame clock's rules: when to step the frames that are waiting; whether the node keeps
up, and whom to blame for frames dropped."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from app.core.events import CAUGHT_UP, ErrorEvent, Event, StateEvent
from app.serve.clock import FrameClock, step_time
from app.serve.sessions import Arrival, Metrics, Session
from app.wire.protocol import INPUT_OVERFLOW, NODE_BEHIND, AudioFrame, SampleFormat, Topics
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


class PacedNode:
    """What the frame clock reads of a node, for its pace alone: sessions, metrics, events."""

    name = "n1"

    def __init__(self, sessions: list[Session]) -> None:
        self.engine = SimpleNamespace(frame_duration=0.08, frame_size=FRAME)
        self.sessions = {(s.owner, s.id): s for s in sessions}
        self.metrics = Metrics()
        self.events: list[Event] = []

    def emit(self, session: Session, event: Event, **extra: Any) -> None:
        self.events.append(event)


def _session(owner: str) -> Session:
    topics = Topics("antiphon", "n1").session(owner, "id")
    return Session("id", owner, 0, topics, SampleFormat.S16, SamplingParams(), 8)


def test_the_node_says_when_it_falls_behind_and_when_it_keeps_up_again() -> None:
    node = PacedNode([_session("alice"), _session("bob")])
    clock = FrameClock(node)  # type: ignore[arg-type]
    for seconds in [0.03, 0.2, 0.03, 0.03]:  # one slow step is a hiccup, no news
        clock._keep_pace(seconds)
    assert not clock.behind and not node.events
    for _ in range(4):
        clock._keep_pace(0.12)
    assert clock.behind and node.metrics.behind and node.metrics.fell_behind == 1
    behind = [e for e in node.events if isinstance(e, ErrorEvent)]
    assert len(behind) == 2 and all(e.code == NODE_BEHIND for e in behind)  # each session told
    assert "the node n1 is slower than real time (120 ms a step" in behind[0].message
    for _ in range(3):
        clock._keep_pace(0.03)
    assert clock.behind  # the median of the latest 8 steps still says behind
    for _ in range(3):
        clock._keep_pace(0.03)
    assert not clock.behind and not node.metrics.behind
    caught_up = [e for e in node.events if isinstance(e, StateEvent)]
    assert [e.state for e in caught_up] == [CAUGHT_UP, CAUGHT_UP]
    assert caught_up[0].detail == "the node n1 keeps up again (30 ms a step)"


def test_an_overflow_is_blamed_on_whoever_causes_it() -> None:
    period = 0.08
    steady, hasty = _session("steady"), _session("hasty")
    for i in range(16):
        steady.arrivals.append(i * period)
        hasty.arrivals.append(i * 0.005)
    fault = steady.overflow_error(1, period, "n1")
    assert fault.code == NODE_BEHIND and "you send in real time" in str(fault)
    fault = hasty.overflow_error(1, period, "n1")
    assert fault.code == INPUT_OVERFLOW and "send one frame per 80 ms" in str(fault)
