"""`antiphon talk --remote` recordings keep the conversation's time, against a real mosquitto and a
node in-process: frames the node never answered are silence, with an event saying so, and a
recording started mid-session has its own frame 0."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from app.core.events import EventLog, FrameStats, StateEvent
from app.core.models import random_model
from app.core.recording import SILENCE, read_recording
from app.core.runtime import CapturedFrame, Clock, CollectingSink, RealClock
from app.eval.folders import load_recording
from app.talk.remote import RemoteTalkSession
from app.wire.mqtt import BrokerSettings
from model import SamplingParams
from tests.app.serve.test_serve import serving
from tests.mosquitto import Mosquitto, running_broker

F = 1920
PERIOD = F / 24000


@pytest.fixture(scope="module")
def model():
    return random_model(torch.device("cpu"), SamplingParams())


@pytest.fixture
def broker(tmp_path: Path):
    with running_broker(tmp_path) as running:
        yield running


class BurstSource:
    """A microphone paced in real time, except for `burst`: those frames go out at once (a
    client that stalled and caught up), more than the node's queue holds, so it skips some.
    `at(i)` runs as frame i is captured."""

    def __init__(
        self, audio: np.ndarray, clock: Clock, burst: range, at: Callable[[int], None]
    ) -> None:
        self.audio, self.clock, self.burst, self.at = audio, clock, burst, at

    async def frames(self) -> AsyncIterator[CapturedFrame]:
        start = self.clock.now()
        for i, pcm in enumerate(self.audio):
            if i not in self.burst:
                await self.clock.sleep_until(start + (i + 1) * PERIOD)
            self.at(i)
            yield CapturedFrame(pcm, self.clock.now())


def _quantised(audio: np.ndarray) -> np.ndarray:
    """What the node hears of float audio sent as s16."""
    return np.clip(np.round(audio * 32768), -32768, 32767) / 32768


def test_a_remote_recording_keeps_the_conversations_time(
    model, broker: Mosquitto, tmp_path: Path
) -> None:
    frames = 40
    rng = np.random.default_rng(5)
    audio = np.clip(0.2 * rng.standard_normal((frames, F)), -1, 1).astype(np.float32)
    sink, log = CollectingSink(), EventLog()
    late = tmp_path / "late"

    async def main() -> None:
        async with serving(model, broker, queue_frames=2):
            session = RemoteTalkSession(
                BrokerSettings(broker.host, broker.port),
                node="n1",
                sampling=SamplingParams(seed=4),
                record=tmp_path / "whole",
                source=BurstSource(audio, RealClock(), range(6, 18), lambda i: at(i)),
                sink=sink,
                notices=lambda text: None,
            )
            session.events.sinks.append(log)

            def at(i: int) -> None:  # the TUI's `c` while frames flow
                if i == 24:
                    session.stop_recording()
                    session.start_recording(late)
                elif i == 32:
                    session.stop_recording()

            await session.run()

    asyncio.run(main())
    answered = [s.frame for s in log.of(FrameStats)]  # the sequence numbers of the replies
    assert len(answered) == len(sink.played) and len(answered) < frames  # the node skipped some

    # from the start to frame 24: every frame captured, answered or not (less those in flight)
    whole = read_recording(tmp_path / "whole")
    held = len(whole.user) // F
    assert 12 <= held <= 24  # frames still in flight when it stopped are not its
    for k, sequence in enumerate(answered):
        if sequence >= held:
            break
        where = slice(sequence * F, (sequence + 1) * F)
        np.testing.assert_allclose(whole.assistant[where], sink.played[k], atol=1 / 32768)
        np.testing.assert_allclose(whole.user[where], _quantised(audio[sequence]), atol=1 / 32768)
    skipped = sorted(set(range(held)) - set(answered))
    for sequence in skipped:
        assert not whole.assistant[sequence * F : (sequence + 1) * F].any()
        assert not whole.user[sequence * F : (sequence + 1) * F].any()
    silences = [e for e in whole.events if e["type"] == "state" and e["state"] == SILENCE]
    assert silences and sum(int(e["detail"].split()[0]) for e in silences) == len(skipped)
    assert whole.meta["silent_frames"] == len(skipped) and whole.meta["frames"] == held
    recorded = [e["frame"] for e in whole.events if e["type"] == "frame"]
    assert recorded == [s for s in answered if s < held]
    assert whole.meta["summary"]["frames"] == len(recorded)
    assert all(e["frame"] < held for e in whole.events)
    (said,) = load_recording(tmp_path / "whole").warnings  # eval tells where time is missing
    assert f"{len(skipped)} frame(s)" in said and "never processed" in said

    # started at frame 24 and stopped at 32: its own frame 0, the frames it held, its own figures
    part = read_recording(late)
    held = len(part.user) // F
    assert 2 <= held <= 8
    stats = [e["frame"] for e in part.events if e["type"] == "frame"]
    assert stats == [s - 24 for s in answered if 24 <= s < 24 + held]
    assert all(e["frame"] < held for e in part.events)
    for i in range(held):
        where = slice(i * F, (i + 1) * F)
        heard = _quantised(audio[24 + i]) if i in stats else 0.0
        np.testing.assert_allclose(part.user[where], heard, atol=1 / 32768)
    assert part.meta["summary"]["frames"] == len(stats) and part.meta[
        "silent_frames"
    ] == held - len(stats)
    lost = log.of(FrameStats)[-1].dropped_input
    assert part.meta["summary"]["dropped_input"] < lost  # the burst's losses came before it
    assert not [e for e in log.of(StateEvent) if e.state == SILENCE]  # the recordings' own


class DroppingSource:
    """A microphone paced in real time whose queue dropped `dropped` frames just before frame
    `at` (MicrophoneSource when the send stalled): that frame says so."""

    def __init__(self, audio: np.ndarray, clock: Clock, at: int, dropped: int) -> None:
        self.audio, self.clock, self.at, self.dropped = audio, clock, at, dropped

    async def frames(self) -> AsyncIterator[CapturedFrame]:
        start = self.clock.now()
        for i, pcm in enumerate(self.audio):
            await self.clock.sleep_until(start + (i + 1) * PERIOD)
            yield CapturedFrame(pcm, self.clock.now(), self.dropped if i == self.at else 0)


def test_frames_the_microphone_dropped_keep_their_place_in_a_remote_recording(
    model, broker: Mosquitto, tmp_path: Path
) -> None:
    rng = np.random.default_rng(6)
    audio = np.clip(0.2 * rng.standard_normal((12, F)), -1, 1).astype(np.float32)
    log = EventLog()

    async def main() -> None:
        async with serving(model, broker):
            session = RemoteTalkSession(
                BrokerSettings(broker.host, broker.port),
                node="n1",
                record=tmp_path / "rec",
                source=DroppingSource(audio, RealClock(), at=6, dropped=2),
                sink=CollectingSink(),
                notices=lambda text: None,
            )
            session.events.sinks.append(log)
            await session.run()

    asyncio.run(main())
    assert log.of(FrameStats)[-1].dropped_input >= 2
    recording = read_recording(tmp_path / "rec")
    for i in range(len(recording.user) // F):  # the captured frame i sits at 6 + 2 + (i - 6)
        heard = recording.user[i * F : (i + 1) * F]
        if i in (6, 7):
            assert not heard.any()
        elif heard.any():
            expected = _quantised(audio[i if i < 6 else i - 2])
            np.testing.assert_allclose(heard, expected, atol=1 / 32768)
    assert recording.meta["silent_frames"] >= 2 and len(recording.user) // F >= 12
