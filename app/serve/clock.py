"""The node's frame clock: once per frame period, one batched step for the sessions that have a
frame, timed just after the last of the clients' phases; replies carry the sequence number of
the frame they answer.

Each client sends a frame every 80 ms on a phase of its own. `step_time` picks the moment that
serves them all with the least waiting; a session that falls a frame behind gets a step at once.
The step runs in the node's one torch thread (the BatchEngine and the recordings' audio live
there); a step that fails ends its sessions only, a recording that fails ends only itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Iterable
from typing import Any, Protocol

import aiomqtt
import numpy as np

from app.core.engine import BatchEngine, StepResult
from app.core.events import CAUGHT_UP, ErrorEvent, Event, StateEvent, monologue_event
from app.wire.protocol import NODE_BEHIND, AudioFrame, encode_audio
from model.errors import AntiphonError

from .sessions import Arrival, Metrics, Session

log = logging.getLogger(__name__)

STEP_MARGIN = 0.003  # seconds a step waits after the expected last arrival of its cluster
PACE_STEPS = 8  # the latest steps whose median says whether the node keeps up
CAUGHT_UP_BELOW = 0.9  # of the frame period: the median step that ends being behind


class Node(Protocol):
    """What the frame clock needs of the node whose sessions it steps."""

    @property
    def name(self) -> str: ...

    @property
    def engine(self) -> BatchEngine: ...

    @property
    def sessions(self) -> dict[tuple[str, str], Session]: ...

    @property
    def metrics(self) -> Metrics: ...

    def in_torch(self, function: Any, *args: Any) -> asyncio.Future[Any]: ...

    def emit(self, session: Session, event: Event, **extra: Any) -> None: ...

    async def close_session(self, session: Session, reason: str) -> None: ...


def step_time(
    sessions: Iterable[Session], ready: list[Session], now: float, period: float
) -> float:
    """When to step the frames waiting in `ready`: just after the last arrival of their cluster.

    Each client sends a frame per period on a phase of its own. One step per period serves them
    all with the least waiting if it comes right after the phase that precedes the largest gap
    between phases. A frame later than that (jitter) waits for the next step, or gets a step of
    its own at once when its session falls a frame behind (the caller's rule).
    """
    phases = sorted(
        s.last_arrival % period for s in sessions if s.queue or now - s.last_arrival < 2 * period
    )
    gaps = [b - a for a, b in zip(phases, phases[1:], strict=False)]
    gaps.append(phases[0] + period - phases[-1])
    end = phases[max(range(len(gaps)), key=gaps.__getitem__)]
    oldest = min(s.queue[0].time for s in ready)
    return oldest + (end + STEP_MARGIN - oldest) % period


class FrameClock:
    """Steps a node's sessions on the frame period (run it as one task of the node)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.wake = asyncio.Event()  # set when a frame arrives
        self.behind = False  # the median of the latest steps is longer than a frame
        self._silence = np.zeros(node.engine.frame_size, dtype=np.float32)
        self._recent: deque[float] = deque(maxlen=PACE_STEPS)  # seconds per step

    async def run(self, client: aiomqtt.Client) -> None:
        """Step until cancelled: when the frames waiting are due, or at once for a session
        that has fallen a frame behind; otherwise sleep until then or until a frame arrives."""
        while True:
            ready = [s for s in self.node.sessions.values() if s.queue]
            now = time.monotonic()
            period = self.node.engine.frame_duration
            at = step_time(self.node.sessions.values(), ready, now, period) if ready else math.inf
            if now >= at or any(len(s.queue) > 1 for s in ready):  # due, or someone is behind
                await self._step(client, ready)
                continue
            if self.behind and not self.node.sessions:  # nothing left to be behind with
                self._caught_up(f"the node {self.node.name} has no sessions left: not behind")
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), None if at == math.inf else at - now)

    async def _step(self, client: aiomqtt.Client, ready: list[Session]) -> None:
        batch = [(session, session.queue.popleft()) for session in ready]
        frames = {s.slot: self._silence if s.muted else a.frame.pcm for s, a in batch}
        started = time.perf_counter()
        try:
            results, unrecorded = await self.node.in_torch(self._step_in_torch, batch, frames)
        except Exception as exc:  # a failed step (out of memory, say) ends its sessions only
            log.exception("a batched step failed")
            self.node.metrics.errors["step_failed"] += 1
            for session, _ in batch:
                self.node.emit(
                    session, ErrorEvent(session.elapsed, session.position, str(exc), fatal=True)
                )
                await self.node.close_session(session, "the node failed to step it")
            return
        self.node.metrics.steps += 1
        self.node.metrics.step_ms.append(1000 * (time.perf_counter() - started))
        self._keep_pace(time.perf_counter() - started)
        for session, _ in batch:  # a recording that failed ends, its conversation goes on
            if session.slot in unrecorded and session.recorder is not None:
                recorder, session.recorder = session.recorder, None
                self.node.metrics.errors["recording_failed"] += 1
                self.node.emit(
                    session,
                    ErrorEvent(
                        session.elapsed,
                        session.position,
                        f"recording stopped: {unrecorded[session.slot]}",
                        hint="free disk space or check the --record folder; what was written "
                        "is kept",
                    ),
                )
                with contextlib.suppress(AntiphonError, OSError, RuntimeError):
                    recorder.close(session.summary(self.node.engine.frame_duration))
        now = time.monotonic()
        publishing = []
        for session, arrival in batch:
            result = results[session.slot]
            index = session.index_of(arrival.frame)
            session.frames, session.position = session.frames + 1, index + 1
            session.timings.add(result.compute_ms, result.encode_ms, result.lm_ms, result.decode_ms)
            if session.closed:
                continue
            publishing.extend(self._reply(client, session, arrival, result, index, now))
        await asyncio.gather(*publishing)

    def _keep_pace(self, seconds: float) -> None:
        """Say when the node falls behind real time, and when it keeps up again: in its log,
        its metrics and an event to every session (their clients then know where the delay
        is). One slow step (a hiccup) is absorbed by the queues and is no news."""
        self._recent.append(seconds)
        period = self.node.engine.frame_duration
        median = float(np.median(self._recent))
        metrics = self.node.metrics
        if not self.behind and len(self._recent) >= PACE_STEPS // 2 and median > period:
            self.behind = metrics.behind = True
            metrics.fell_behind += 1
            log.warning(
                "node %s is slower than real time: a step takes %.0f ms, frames last %.0f ms, so "
                "its sessions lose frames; give it a faster --device or fewer --slots",
                self.node.name, 1000 * median, 1000 * period,
            )  # fmt: skip
            for session in list(self.node.sessions.values()):
                self.node.emit(session, self.behind_event(session))
        elif self.behind and median < CAUGHT_UP_BELOW * period:
            self._caught_up(
                f"the node {self.node.name} keeps up again ({1000 * median:.0f} ms a step)"
            )

    def _caught_up(self, detail: str) -> None:
        self.behind = self.node.metrics.behind = False
        self._recent.clear()
        log.warning("%s", detail)
        for session in list(self.node.sessions.values()):
            self.node.emit(
                session, StateEvent(session.elapsed, session.position, CAUGHT_UP, detail)
            )

    def behind_event(self, session: Session) -> ErrorEvent:
        period = self.node.engine.frame_duration
        median = float(np.median(self._recent)) if self._recent else 0.0
        return ErrorEvent(
            session.elapsed,
            session.position,
            f"the node {self.node.name} is slower than real time ({1000 * median:.0f} ms a step, "
            f"frames last {1000 * period:.0f} ms): some of your audio is dropped there; you "
            "send in real time",
            hint="nothing to change on your side: the node needs a faster device or fewer slots",
            code=NODE_BEHIND,
        )

    def _step_in_torch(
        self, batch: list[tuple[Session, Arrival]], frames: dict[int, np.ndarray]
    ) -> tuple[dict[int, StepResult], dict[int, str]]:
        """The batched step, then each session's recording; a recording that fails (a full
        disk) is reported by slot and does not fail the step for the others."""
        results = self.node.engine.step(frames)
        unrecorded: dict[int, str] = {}
        for session, arrival in batch:
            if session.recorder is not None:  # frames never stepped before it: silence
                try:
                    session.recorder.write_frame(
                        results[session.slot].pcm,
                        frames[session.slot],
                        frame=session.index_of(arrival.frame),
                    )
                except (AntiphonError, OSError, RuntimeError) as exc:
                    unrecorded[session.slot] = str(exc)
        return results, unrecorded

    def _reply(
        self,
        client: aiomqtt.Client,
        session: Session,
        arrival: Arrival,
        result: StepResult,
        index: int,
        now: float,
    ) -> list[Any]:
        node_us = 1e6 * (now - arrival.time)
        session.timings.node_ms.append(node_us / 1000)
        reply = AudioFrame(
            arrival.frame.sequence,
            result.pcm,
            session.format,
            node_us=round(node_us),
            encode_us=round(1000 * result.encode_ms),
            lm_us=round(1000 * result.lm_ms),
            decode_us=round(1000 * result.decode_ms),
        )
        self.node.metrics.frames_out += 1
        publishing = [client.publish(session.topics.out_audio, encode_audio(reply))]
        if result.text:
            event = monologue_event(
                session.elapsed, index, result.text_token, result.text, result.heard
            )
            publishing.append(client.publish(session.topics.out_text, event.to_json()))
            if session.recorder is not None:
                session.recorder.emit(event)
        return publishing
