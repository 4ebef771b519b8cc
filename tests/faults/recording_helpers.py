"""The fault suite's recording side: the third check of every fault, "nothing lost", and the
product's own commands in processes of their own.

    assert_whole(folder)    # check 3: session.wav readable by any reader, as long as its events say
    result = antiphon("eval", str(folder), "--json")   # python -m app.cli, from the checkout
    assert_no_traceback(result.stderr)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import wave
from pathlib import Path
from typing import Any

import numpy as np
import soundfile

from app.core.audio import AudioFormat
from app.core.events import FrameStats, TextEvent
from app.core.recording import SESSION_WAV, Recorder, Recording, read_recording
from model import SamplingParams

ROOT = Path(__file__).resolve().parents[2]
F = 1920
WAIT = 120.0  # seconds for a command to end (the machine may be busy)


def antiphon(*args: str, timeout: float = WAIT, env: dict[str, str] | None = None) -> Any:
    """`antiphon ARGS` as a user runs it, from this checkout; the CompletedProcess (text)."""
    environment = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"} | (env or {})
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment,
    )


def assert_whole(folder: Path) -> Recording:
    """Nothing lost: session.wav is readable by libsndfile and by Python's `wave` (its header's
    sizes are right), and it holds every frame its events and meta.json speak of."""
    wav = folder / SESSION_WAV
    info = soundfile.info(wav)
    assert (info.channels, info.samplerate, info.subtype) == (2, 24000, "PCM_16"), info
    with wave.open(str(wav)) as reader:
        assert reader.getnframes() == info.frames, "the WAV header's sizes are stale"
    recording = read_recording(folder)
    frames = -(-len(recording.user) // F)
    assert len(recording.user) == frames * F, "a recording holds whole frames"
    # Text and frame events belong to a frame, which must be there; the others say what
    # happened at a point of the clock, which may be the end ("stopped", "closed", or an error
    # before the first frame of a recording that got none: frame = count).
    late = [e for e in recording.events if e["frame"] + (e["type"] in ("text", "frame")) > frames]
    assert not late, f"events of frames beyond the {frames} in {wav}: {late[:3]}"
    if "frames" in recording.meta:
        assert recording.meta["frames"] == frames
    summary = recording.meta.get("summary")
    if summary:
        assert summary["frames"] <= frames
    return recording


def make_recording(folder: Path, frames: int, *, close: bool = True) -> Recorder:
    """A recording written by the product's Recorder: noise in both channels, a frame event per
    frame and a word every fifth frame (the model named as a remote node would name it)."""
    rng = np.random.default_rng(len(str(folder)))
    recorder = Recorder(folder, AudioFormat(24000, F), "test-model", SamplingParams(), {})
    for t in range(frames):
        pair = np.clip(0.1 * rng.standard_normal((2, F)), -1, 1).astype(np.float32)
        recorder.write_frame(pair[0], pair[1])
        if t % 5 == 0:
            recorder.emit(TextEvent(t * 0.08, t, 1000 + t, f" w{t}"))
        recorder.emit(FrameStats(t * 0.08, t, 1.0, 2.0, 1.0, 4.0, 0.05, latency_ms=120.0))
    if close:
        recorder.close(recorder.summary())
    return recorder


def evaluated(result: Any) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """`antiphon eval --json`'s report: the recordings evaluated and the folders that failed,
    by folder name."""
    report = json.loads(result.stdout)
    done = {Path(r["path"]).name: r for r in report["recordings"]}
    failed = {Path(f["path"]).name: f["error"] for f in report["failed"]}
    return done, failed
