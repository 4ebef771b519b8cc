"""What `antiphon serve` keeps per session and per node: queues, sequence numbers, counters."""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.core.recording import Recorder
from app.core.timing import Timings
from app.wire.protocol import (
    DUPLICATE,
    INPUT_OVERFLOW,
    NODE_BEHIND,
    OUT_OF_ORDER,
    AudioFrame,
    ProtocolError,
    SampleFormat,
    SessionTopics,
)
from model import SamplingParams

ERROR_EVENT_INTERVAL = 1.0  # seconds: at most one error event per code and session this often
ARRIVALS_KEPT = 16  # a session's latest arrival times: whether its client sends in real time
FAST = 1.25  # frames arriving this many times faster than real time are the client's doing


@dataclass(frozen=True)
class Arrival:
    frame: AudioFrame
    time: float  # monotonic, when the node received it


@dataclass
class Session:
    """One conversation on the node: a slot of the BatchEngine and its topics."""

    id: str  # secrets.token_urlsafe: 128 random bits
    owner: str
    slot: int
    topics: SessionTopics
    format: SampleFormat  # of the replies
    sampling: SamplingParams
    queue_frames: int  # input frames held at most; beyond, the oldest is dropped
    opened_at: float = field(default_factory=time.monotonic)
    last_heard: float = field(default_factory=time.monotonic)  # a valid frame or command
    last_arrival: float = -np.inf  # of the last frame accepted: its phase times the steps
    queue: deque[Arrival] = field(default_factory=deque)
    arrivals: deque[float] = field(default_factory=lambda: deque(maxlen=ARRIVALS_KEPT))
    last_sequence: int = -1
    muted: bool = False
    closed: bool = False
    frames: int = 0  # frames stepped so far
    # The conversation's clock, which events and recordings count on: the client's sequence
    # numbers from its first one. A frame lost on the way or dropped here still takes its place.
    first_sequence: int = -1
    position: int = 0  # the index of the frame after the last one stepped
    dropped: int = 0  # input frames dropped because the queue was full
    missing: int = 0  # sequence numbers skipped by the client (lost on the way, or never sent)
    # per frame: compute, and node_ms (its arrival to the reply handed to MQTT)
    timings: Timings = field(default_factory=Timings)
    recorder: Recorder | None = None
    errors: Counter[str] = field(default_factory=Counter)
    _reported: dict[str, float] = field(default_factory=dict)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.opened_at

    def accept(self, frame: AudioFrame, now: float) -> int:
        """Queue a frame in sequence order; returns how many older frames it pushed out.

        Raises ProtocolError for a repeated or earlier sequence number (the frame is dropped).
        """
        if frame.sequence == self.last_sequence:
            raise ProtocolError(DUPLICATE, f"frame {frame.sequence} arrived twice: dropped")
        if frame.sequence < self.last_sequence:
            raise ProtocolError(
                OUT_OF_ORDER,
                f"frame {frame.sequence} arrived after frame {self.last_sequence}: dropped",
            )
        if self.last_sequence >= 0:
            self.missing += frame.sequence - self.last_sequence - 1
        else:
            self.first_sequence = frame.sequence
        self.last_sequence = frame.sequence
        self.last_heard = self.last_arrival = now
        self.arrivals.append(now)
        pushed = 0
        while len(self.queue) >= self.queue_frames:
            self.queue.popleft()
            pushed += 1
        self.queue.append(Arrival(frame, now))
        self.dropped += pushed
        return pushed

    def index_of(self, frame: AudioFrame) -> int:
        """The frame's place on the conversation's clock."""
        return frame.sequence - self.first_sequence

    def sends_too_fast(self, period: float) -> bool:
        """Whether the client's latest frames came faster than one per period (a burst)."""
        times = self.arrivals
        return len(times) > 1 and (len(times) - 1) * period > FAST * (times[-1] - times[0])

    def overflow_error(self, pushed: int, period: float, node: str) -> ProtocolError:
        """Frames pushed out of a full queue: the client's fault only if it sends too fast."""
        if self.sends_too_fast(period):
            return ProtocolError(
                INPUT_OVERFLOW,
                f"frames arrive faster than real time: {pushed} dropped ({self.dropped} so far); "
                f"send one frame per {1000 * period:.0f} ms",
            )
        return ProtocolError(
            NODE_BEHIND,
            f"the node {node} is slower than real time: {pushed} of your frames dropped there "
            f"({self.dropped} so far); you send in real time, nothing to change on your side",
        )

    def may_report(self, code: str, now: float) -> bool:
        """Whether an error event with this code goes out now (one per code per second)."""
        if now - self._reported.get(code, -np.inf) < ERROR_EVENT_INTERVAL:
            return False
        self._reported[code] = now
        return True

    def summary(self, frame_duration: float) -> dict[str, Any]:
        """The timing summary (app.core.timing) of the session so far, for its recording."""
        self.timings.counters["dropped_input"] = self.dropped
        return self.timings.summary(
            frame_duration,
            duration_s=self.elapsed,
            missing_input=self.missing,
            errors=dict(self.errors),
        )


@dataclass
class Metrics:
    """The node's counters, published retained on <prefix>/<node>/metrics."""

    started: float = field(default_factory=time.monotonic)
    requests: int = 0
    sessions_opened: int = 0
    sessions_closed: int = 0
    timeouts: int = 0
    frames_in: int = 0
    frames_out: int = 0
    frames_dropped: int = 0
    steps: int = 0
    reconnects: int = 0
    behind: bool = False  # the recent steps take longer than a frame: sessions lose frames
    fell_behind: int = 0  # times the node fell behind so far
    errors: Counter[str] = field(default_factory=Counter)
    step_ms: deque[float] = field(default_factory=lambda: deque(maxlen=1000))
    _reported: dict[str, float] = field(default_factory=dict)

    def may_report(self, code: str, now: float) -> bool:
        """For errors that name no session: one event per code per second."""
        if now - self._reported.get(code, -np.inf) < ERROR_EVENT_INTERVAL:
            return False
        self._reported[code] = now
        return True

    def as_dict(self) -> dict[str, Any]:
        steps = list(self.step_ms)
        return {
            "uptime_s": round(time.monotonic() - self.started, 3),
            "requests": self.requests,
            "sessions_opened": self.sessions_opened,
            "sessions_closed": self.sessions_closed,
            "timeouts": self.timeouts,
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "frames_dropped": self.frames_dropped,
            "steps": self.steps,
            "reconnects": self.reconnects,
            "behind": self.behind,
            "fell_behind": self.fell_behind,
            "step_ms_median": float(np.median(steps)) if steps else None,
            "step_ms_p99": float(np.percentile(steps, 99)) if steps else None,
            "errors": dict(self.errors),
            "errors_total": sum(self.errors.values()),
        }
