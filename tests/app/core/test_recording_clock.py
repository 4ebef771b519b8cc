"""A recording keeps its own clock: started mid-conversation it has its own frame 0, counters and
summary; frames the model never processed are silence in it, so it keeps the conversation's time.

The conversation is the real runtime (app.core.runtime) with the tiny random model and a virtual
clock; the recording is read back from disk as `antiphon eval` reads it.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from app.core.audio import level_db
from app.core.engine import Engine
from app.core.events import Event, EventFanout, EventLog, FrameStats, StateEvent, TextEvent
from app.core.models import LoadedModel, random_model
from app.core.recording import SILENCE, Origin, Recorder, read_recording
from app.core.runtime import CollectingSink, Conversation, PacedFileSource, RealClock, VirtualClock
from app.eval.cli import runtime
from app.eval.folders import load_recording
from model import SamplingParams
from tests.app.core.test_runtime import SlowEngine

F = 1920


@pytest.fixture(autouse=True)
def hash_cache(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTIPHON_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    return random_model(torch.device("cpu"), SamplingParams(seed=3))


def _speech(seconds: float) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (0.2 * rng.standard_normal(int(seconds * 24000))).astype(np.float32)


class GlitchySink(CollectingSink):
    """A speaker whose device reports an underrun and two xruns for every block played."""

    def counters(self) -> dict[str, int]:
        return {"underruns": len(self.played), "xruns": 2 * len(self.played)}


class RecordFrom:
    """Starts a recording when the conversation has played `start` frames and stops it at
    `stop`, the way the TUI's `c` key does (on the loop, between two events)."""

    def __init__(
        self,
        conversation: Conversation,
        events: EventFanout,
        recorder: Recorder,
        start: int,
        stop: int,
    ):
        self.conversation, self.events, self.recorder = conversation, events, recorder
        self.start, self.stop = start, stop
        self.origin: int | None = None  # the conversation's frame that became frame 0

    def emit(self, event: Event) -> None:
        if not isinstance(event, FrameStats):
            return
        if event.frame == self.start:
            self.origin = self.conversation._frame
            self.conversation.attach_recorder(self.recorder)
            self.events.sinks.append(self.recorder)
        elif event.frame == self.stop:
            self.conversation.recorder = None
            self.recorder.update_counters(self.conversation.counters())
            self.recorder.close(self.recorder.summary())


def test_a_recording_started_mid_conversation_is_self_contained(model, tmp_path) -> None:
    engine = Engine(model)
    clock = VirtualClock()
    source = PacedFileSource(_speech(4.0), F, 24000, clock)  # 50 frames
    sink, log = GlitchySink(), EventLog()
    recorder = Recorder(tmp_path / "rec", engine.format, model, engine.sampling, {})
    events = EventFanout(log)
    conversation = Conversation(engine, source, sink, events, clock, input_queue_frames=100)
    events.sinks.append(RecordFrom(conversation, events, recorder, start=20, stop=40))
    asyncio.run(conversation.run())

    recording = read_recording(tmp_path / "rec")
    origin = events.sinks[1].origin  # type: ignore[attr-defined]
    assert origin is not None and origin >= 20
    frames = len(recording.assistant) // F
    assert frames == recording.meta["frames"] and 15 <= frames <= 21
    # frame 0 of the recording is the conversation's frame `origin`, in both channels
    for i in range(frames):
        np.testing.assert_allclose(
            recording.assistant[i * F : (i + 1) * F], sink.played[origin + i], atol=1 / 32768
        )
    # its events count from its own frame 0 and time 0, and say what its WAV holds
    stats = [e for e in recording.events if e["type"] == "frame"]
    assert [e["frame"] for e in stats] == list(range(len(stats))) and len(stats) <= frames
    for event in stats:
        segment = recording.assistant[event["frame"] * F : (event["frame"] + 1) * F]
        assert event["output_level_db"] == pytest.approx(level_db(segment), abs=0.1)
    assert stats[0]["time"] < 0.2 and all(0 <= e["frame"] < frames for e in recording.events)
    texts = [e for e in log.of(TextEvent) if origin <= e.frame < origin + frames]
    recorded_texts = [e for e in recording.events if e["type"] == "text"]
    assert [e["frame"] for e in recorded_texts] == [e.frame - origin for e in texts]
    # its counters are its own: one underrun and two xruns per frame played while it ran
    summary = recording.meta["summary"]
    assert summary["frames"] == len(stats)
    assert len(stats) <= summary["underruns"] <= len(stats) + 4
    assert summary["xruns"] == 2 * summary["underruns"]
    assert stats[0]["underruns"] <= 4  # not the conversation's 20 and more
    # `antiphon eval` reads the same figures and puts every word inside the recording
    evaluated = load_recording(tmp_path / "rec")
    figures = runtime(evaluated.frames, evaluated.frame_duration)
    assert figures is not None and figures["underruns"] == stats[-1]["underruns"]
    assert evaluated.pieces and recorded_texts
    assert all(0 <= piece.time < frames * F / 24000 for piece in evaluated.pieces)


def test_a_recording_keeps_time_when_the_model_drops_frames(model, tmp_path) -> None:
    engine = Engine(model)
    slow = SlowEngine(engine, seconds=0.12)  # 120 ms of compute for an 80 ms frame
    clock = RealClock()
    audio = _speech(1.6)  # 20 frames
    source = PacedFileSource(audio, F, 24000, clock)  # type: ignore[arg-type]
    recorder = Recorder(tmp_path / "rec", engine.format, model, engine.sampling, {})
    log = EventLog()
    conversation = Conversation(
        slow,  # type: ignore[arg-type]
        source,
        CollectingSink(),
        EventFanout(log, recorder),
        clock,  # type: ignore[arg-type]
        recorder,
        input_queue_frames=2,
    )
    timings = asyncio.run(conversation.run())
    recorder.update_counters(conversation.counters())
    recorder.close(recorder.summary())
    dropped = timings.counters["dropped_input"]
    assert dropped > 0

    recording = read_recording(tmp_path / "rec")
    frames = len(recording.user) // F
    processed = {e.frame for e in log.of(FrameStats)}
    # the conversation's time: every frame up to the last processed, dropped ones as silence
    assert frames == max(processed) + 1 and frames >= 20 - 3
    silences = [e for e in recording.events if e["type"] == "state" and e["state"] == SILENCE]
    assert sum(int(e["detail"].split()[0]) for e in silences) == frames - len(processed)
    assert recording.meta["silent_frames"] == frames - len(processed) > 0
    for i in range(frames):
        user = recording.user[i * F : (i + 1) * F]
        if i in processed:  # the user's audio sits where it was captured
            np.testing.assert_allclose(user, audio[i * F : (i + 1) * F], atol=1 / 32768)
        else:
            assert not user.any()
    assert recording.meta["summary"]["dropped_input"] == dropped


def test_events_of_a_late_recording_are_rebased(model, tmp_path) -> None:
    recorder = Recorder(tmp_path / "rec", model.format, model, SamplingParams(), {})
    recorder.start_at(Origin(time=8.0, frame=100, counters={"underruns": 5, "xruns": 1}))
    zero = np.zeros(F, np.float32)
    recorder.emit(TextEvent(7.9, 99, 1, " before"))  # a frame before the recording: left out
    recorder.emit(StateEvent(8.01, -1, "muted"))  # no frame: time rebased only
    recorder.write_frame(zero, zero, frame=99)  # a late frame from before: left out
    recorder.write_frame(zero + 0.5, zero, frame=100)
    recorder.emit(FrameStats(8.08, 100, 1, 1, 1, 3, 0.04, underruns=7, xruns=1))
    recorder.write_frame(zero + 0.25, zero, frame=103)  # 101 and 102 never came: silence
    recorder.emit(TextEvent(8.3, 103, 2, " after"))
    recorder.pad_to(105)  # the end of the recording: 104 never came either
    recorder.close(recorder.summary())
    recording = read_recording(tmp_path / "rec")
    assert len(recording.assistant) == 5 * F
    levels = [float(recording.assistant[i * F]) for i in range(5)]
    assert levels == [0.5, 0.0, 0.0, 0.25, 0.0]
    kinds = [(e["type"], e["frame"], e.get("state") or e.get("text")) for e in recording.events]
    assert kinds == [
        ("state", -1, "muted"),
        ("frame", 0, None),
        ("state", 1, SILENCE),
        ("text", 3, " after"),
        ("state", 4, SILENCE),
    ]
    assert recording.events[0]["time"] == pytest.approx(0.01)
    assert recording.events[1]["underruns"] == 2 and recording.events[1]["xruns"] == 0
    assert recording.meta["silent_frames"] == 3 and recording.meta["frames"] == 5
    assert recording.meta["summary"]["underruns"] == 2
