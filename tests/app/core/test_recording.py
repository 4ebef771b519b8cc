"""Recording folders: the files and their formats, hashing, crash safety, FDB export."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from app.core.audio import AudioFormat
from app.core.events import FrameStats, StateEvent, TextEvent
from app.core.models import LoadedModel, random_model
from app.core.recording import (
    EVENTS_FILE,
    META_FILE,
    MICROPHONE_WAV,
    SESSION_WAV,
    Recorder,
    RecordingError,
    export_fdb,
    file_sha256,
    hash_cache_path,
    read_recording,
)
from model import ModelFiles, SamplingParams

ROOT = Path(__file__).resolve().parents[3]
F = 1920
PCM16_STEP = 1 / 32768


@pytest.fixture(autouse=True)
def hash_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ANTIPHON_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    return random_model(torch.device("cpu"), SamplingParams())


def _frames(count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Frame t: assistant at 0.01 * t, user at -0.02 * t, so each sample says where it came from."""
    return [
        (np.full(F, 0.01 * t, np.float32), np.full(F, -0.02 * t, np.float32)) for t in range(count)
    ]


def _record(folder: Path, model: LoadedModel, count: int, **kwargs) -> Recorder:
    recorder = Recorder(
        folder, model.format, model, SamplingParams(seed=7), {"inference": "cpu"}, **kwargs
    )
    for t, (assistant, user) in enumerate(_frames(count)):
        recorder.write_frame(assistant, user)
        recorder.emit(TextEvent(t * 0.08, t, 100 + t, f" w{t}"))
    return recorder


def test_session_wav_events_and_meta(tmp_path: Path, model: LoadedModel) -> None:
    folder = tmp_path / "rec"
    with _record(folder, model, 5) as recorder:
        recorder.emit(FrameStats(0.32, 4, 1.0, 2.0, 3.0, 6.0, 0.075))
        recorder.close({"median_compute_ms": 6.0})

    info = soundfile.info(folder / SESSION_WAV)
    assert (info.channels, info.samplerate, info.subtype, info.frames) == (
        2,
        24000,
        "PCM_16",
        5 * F,
    )
    rec = read_recording(folder)
    for t, (assistant, user) in enumerate(_frames(5)):  # left = assistant, right = user
        np.testing.assert_allclose(rec.assistant[t * F : (t + 1) * F], assistant, atol=PCM16_STEP)
        np.testing.assert_allclose(rec.user[t * F : (t + 1) * F], user, atol=PCM16_STEP)
    assert [e["type"] for e in rec.events] == ["text"] * 5 + ["frame"]
    assert rec.events[2] == {"type": "text", "time": 0.16, "frame": 2, "token": 102, "text": " w2"}
    meta = rec.meta
    assert meta["frames"] == 5 and meta["sample_rate"] == 24000
    assert meta["summary"] == {"median_compute_ms": 6.0}
    assert meta["sampling"]["seed"] == 7 and meta["seed"] == 7
    assert meta["devices"] == {"inference": "cpu"}
    assert meta["model"]["name"] == model.name and meta["model"]["files"] is None
    assert meta["model"]["lm_config"]["text_card"] == model.lm.config.text_card
    assert set(meta["versions"]) >= {"antiphon", "torch", "python", "numpy", "platform"}
    assert meta["started_at"] <= meta["ended_at"]


def test_meta_is_written_at_open_and_close_is_idempotent(
    tmp_path: Path, model: LoadedModel
) -> None:
    recorder = _record(tmp_path, model, 2)
    at_open = json.loads((tmp_path / META_FILE).read_text())
    assert at_open["summary"] is None and "ended_at" not in at_open
    recorder.close({"frames": 2})
    recorder.close({"frames": 999})  # no effect
    recorder.emit(StateEvent(1.0, 2, "late"))  # dropped, not an error
    with pytest.raises(RecordingError, match="closed"):
        recorder.write_frame(*_frames(1)[0])
    assert json.loads((tmp_path / META_FILE).read_text())["summary"] == {"frames": 2}
    assert len(read_recording(tmp_path).events) == 2
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic rewrite left nothing behind


def test_an_existing_recording_is_not_overwritten(tmp_path: Path, model: LoadedModel) -> None:
    _record(tmp_path, model, 3).close()
    with pytest.raises(RecordingError, match="already holds a recording"):
        Recorder(tmp_path, model.format, model, SamplingParams(), {})
    assert soundfile.info(tmp_path / SESSION_WAV).frames == 3 * F  # untouched
    _record(tmp_path, model, 1, overwrite=True).close()
    assert soundfile.info(tmp_path / SESSION_WAV).frames == F
    assert len(read_recording(tmp_path).events) == 1


def test_model_files_are_hashed_into_meta(tmp_path: Path, model: LoadedModel) -> None:
    paths = {}
    for role in ("lm_weights", "codec_weights", "tokenizer"):
        paths[role] = tmp_path / f"{role}.bin"
        paths[role].write_bytes(role.encode() * 1000)
    files = ModelFiles(
        paths["lm_weights"],
        paths["codec_weights"],
        paths["tokenizer"],
        model.lm.config,
        model.codec.config,
    )
    named = dataclasses.replace(model, files=files)
    Recorder(tmp_path / "rec", named.format, named, SamplingParams(), {}).close()
    meta = json.loads((tmp_path / "rec" / META_FILE).read_text())
    for role, path in paths.items():
        entry = meta["model"]["files"][role]
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert entry["size"] == path.stat().st_size and entry["path"] == str(path)


def test_hashes_are_cached_by_path_size_and_mtime(tmp_path: Path, hash_cache: Path) -> None:
    path = tmp_path / "weights.safetensors"
    path.write_bytes(b"x" * 4096)
    expected = hashlib.sha256(b"x" * 4096).hexdigest()
    assert file_sha256(path) == expected
    assert hash_cache_path() == hash_cache / "sha256.json"
    cache = json.loads(hash_cache_path().read_text())
    assert cache[str(path.resolve())]["sha256"] == expected

    cache[str(path.resolve())]["sha256"] = "from-the-cache"  # proves the cache is read
    hash_cache_path().write_text(json.dumps(cache))
    assert file_sha256(path) == "from-the-cache"

    path.write_bytes(b"y" * 4096)  # same size, new content and mtime: hashed again
    os.utime(path, ns=(1, 1))
    assert file_sha256(path) == hashlib.sha256(b"y" * 4096).hexdigest()

    hash_cache_path().write_text("{not json")  # a broken cache is ignored, then rewritten
    assert file_sha256(path) == hashlib.sha256(b"y" * 4096).hexdigest()
    assert json.loads(hash_cache_path().read_text())


def test_truncated_last_event_line_is_skipped(tmp_path: Path, model: LoadedModel, caplog) -> None:
    _record(tmp_path, model, 3).close()
    with open(tmp_path / EVENTS_FILE, "a", encoding="utf-8") as f:
        f.write('{"type":"text","time":0.2')  # the process died mid-line
    with caplog.at_level("WARNING", logger="app.core.recording"):
        rec = read_recording(tmp_path)
    assert len(rec.events) == 3
    assert "truncated" in caplog.text

    lines = (tmp_path / EVENTS_FILE).read_text().splitlines()
    lines[1] = lines[1][:10]  # a broken line in the middle is damage, not a crash
    (tmp_path / EVENTS_FILE).write_text("\n".join(lines) + "\n")
    with pytest.raises(RecordingError, match="line 2"):
        read_recording(tmp_path)


_KILLED_SCRIPT = """
import sys, time, numpy as np, torch
from app.core.events import TextEvent
from app.core.models import random_model
from app.core.recording import Recorder
from model import SamplingParams
model = random_model(torch.device("cpu"), SamplingParams())
recorder = Recorder(sys.argv[1], model.format, model, SamplingParams(), {"inference": "cpu"})
for t in range(int(sys.argv[2])):
    recorder.write_frame(np.full(1920, 0.25, np.float32), np.full(1920, -0.25, np.float32))
    recorder.emit(TextEvent(t * 0.08, t, t, "x"))
time.sleep(60)
"""


def test_recording_survives_sigkill(tmp_path: Path) -> None:
    folder, frames = tmp_path / "killed", 6
    process = subprocess.Popen(
        [sys.executable, "-c", _KILLED_SCRIPT, str(folder), str(frames)],
        cwd=ROOT,
        env={**os.environ, "ANTIPHON_CACHE": str(tmp_path / "cache")},
    )
    try:
        deadline = time.monotonic() + 30
        events = folder / EVENTS_FILE
        while not (events.exists() and events.read_text().count("\n") == frames):
            assert process.poll() is None, "the recording process died on its own"
            assert time.monotonic() < deadline, "the recording process wrote nothing in 30 s"
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL

    rec = read_recording(folder)
    assert len(rec.assistant) == frames * F
    assert np.allclose(rec.assistant, 0.25, atol=PCM16_STEP)
    assert np.allclose(rec.user, -0.25, atol=PCM16_STEP)
    assert [e["frame"] for e in rec.events] == list(range(frames))
    assert rec.meta["summary"] is None  # written at open, never closed
    with wave.open(str(folder / SESSION_WAV)) as w:  # the header's sizes are right too
        assert w.getnframes() == frames * F


@pytest.mark.parametrize("sample_rate", [16000, 24000])
def test_export_fdb(tmp_path: Path, model: LoadedModel, sample_rate: int) -> None:
    recorder = Recorder(tmp_path / "rec", model.format, model, SamplingParams(), {})
    silence, click = np.zeros(F, np.float32), np.zeros(F, np.float32)
    click[960] = 0.9
    for t in range(6):  # the user clicks in frame 1, the assistant in frame 4
        recorder.write_frame(click if t == 4 else silence, click if t == 1 else silence)
    recorder.close()

    input_path, output_path = export_fdb(tmp_path / "rec", tmp_path / "fdb", sample_rate)
    user, user_rate = soundfile.read(input_path)
    assistant, assistant_rate = soundfile.read(output_path)
    assert user_rate == assistant_rate == sample_rate
    assert user.ndim == assistant.ndim == 1
    assert len(user) == len(assistant) == 6 * F * sample_rate // 24000
    scale = sample_rate / 24000  # the clicks land where they were, on the output's clock
    assert abs(np.argmax(np.abs(user)) - (F + 960) * scale) <= 1
    assert abs(np.argmax(np.abs(assistant)) - (4 * F + 960) * scale) <= 1
    with pytest.raises(RecordingError, match="already has"):
        export_fdb(tmp_path / "rec", tmp_path / "fdb", sample_rate)


def test_a_sampling_change_during_a_recording_is_an_event_and_ends_in_meta(
    tmp_path: Path, model: LoadedModel
) -> None:
    """Issue 13 item 2: t/T/a/A (the session's request_sampling) wrote no event, and meta.json
    kept only the starting temperatures."""
    import asyncio

    from app.core.engine import Engine
    from app.core.events import EventFanout
    from app.core.runtime import CollectingSink, Conversation, PacedFileSource, VirtualClock

    engine = Engine(model, SamplingParams(text_temperature=0.7, seed=3))
    clock = VirtualClock()
    audio = np.zeros(10 * F, np.float32)
    source = PacedFileSource(audio, F, model.format.sample_rate, clock)
    folder = tmp_path / "rec"
    recorder = Recorder(folder, model.format, model, engine.sampling, {"inference": "cpu"})
    conversation = Conversation(
        engine, source, CollectingSink(), EventFanout(recorder), clock, recorder,
        input_queue_frames=1000,
    )  # fmt: skip
    hotter = dataclasses.replace(engine.sampling, text_temperature=0.9, audio_temperature=1.1)
    frames = source.frames

    async def change_at_frame_4():  # as the TUI's key would, between two frames
        async for i, frame in _enumerate(frames()):
            if i == 4:
                conversation.request_sampling(hotter)
            yield frame

    source.frames = change_at_frame_4  # type: ignore[method-assign]
    timings = asyncio.run(conversation.run())
    recorder.close(timings.summary(engine.frame_duration))

    rec = read_recording(folder)
    (change,) = [e for e in rec.events if e["type"] == "state" and e["state"] == "sampling"]
    assert 0 < change["frame"] < 10  # between two frames, mid-recording
    assert json.loads(change["detail"]) == dataclasses.asdict(hotter)
    assert engine.sampling == hotter
    assert rec.meta["sampling"]["text_temperature"] == pytest.approx(0.7)  # as it started
    assert rec.meta["sampling_at_end"] == dataclasses.asdict(hotter)
    assert rec.meta["sampling_changes"] == [
        {"time": change["time"], "frame": change["frame"], **dataclasses.asdict(hotter)}
    ]


async def _enumerate(items):
    i = 0
    async for item in items:
        yield i, item
        i += 1


def test_the_raw_microphone_is_kept_as_a_third_file_on_the_same_clock(tmp_path: Path) -> None:
    recorder = Recorder(
        tmp_path / "rec",
        AudioFormat(24000, 1920),
        "remote model",
        SamplingParams(),
        {},
        keep_microphone=True,
    )
    frames = [np.full(1920, 0.1 * (i + 1), np.float32) for i in range(3)]
    for raw in frames:
        recorder.write_frame(np.zeros(1920, np.float32), raw * 0.01, raw)  # cleaned is quieter
    recorder.close()
    raw_audio, rate = soundfile.read(tmp_path / "rec" / MICROPHONE_WAV, dtype="float32")
    recording = read_recording(tmp_path / "rec")
    assert rate == 24000 and len(raw_audio) == len(recording.user) == 3 * 1920
    assert np.allclose(raw_audio[1920:3840], 0.2, atol=1e-4)
    assert np.allclose(recording.user[1920:3840], 0.002, atol=1e-4)
    assert recording.meta["microphone"] == MICROPHONE_WAV
