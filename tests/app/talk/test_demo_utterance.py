"""The user's side of `talk` on a machine without a microphone: the spoken question shipped
beside the model (scripts/demo_question.py wrote it), then silence for the answer; a generated
hum where the file is missing or unreadable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile

from app.talk import devices
from app.talk.devices import DEMO_QUESTION, DEMO_SECONDS, demo_user_signal

RATE = 24000


def speaking(audio: np.ndarray) -> np.ndarray:
    """Which 80 ms frames are louder than -40 dBFS."""
    frames = audio[: len(audio) // 1920 * 1920].reshape(-1, 1920)
    return np.sqrt(np.mean(frames**2, axis=1)) > 0.01


def test_the_shipped_question_is_spoken_then_silence_for_the_answer() -> None:
    assert devices.DEMO_QUESTION_FILE.is_file(), "scripts/demo_question.py writes it"
    audio, name = demo_user_signal(RATE)
    assert len(audio) == round(DEMO_SECONDS * RATE) and audio.dtype == np.float32
    assert name == f'demo question "{DEMO_QUESTION}" (espeak-ng)'
    talk = speaking(audio)
    assert not talk[:5].any()  # a moment of silence first
    assert 0.8 <= talk.sum() * 0.08 <= 3.0  # a short question...
    assert not talk[-40:].any()  # ...and at least 3.2 s for the answer


def test_a_long_question_keeps_its_time_for_the_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    long = tmp_path / "long.flac"
    soundfile.write(long, np.full(8 * 16000, 0.1, np.float32), 16000, format="FLAC")
    monkeypatch.setattr(devices, "DEMO_QUESTION_FILE", long)
    audio, _ = demo_user_signal(RATE)
    assert len(audio) == round((8 + devices.ANSWER_SECONDS) * RATE)  # resampled, not cut
    assert speaking(audio)[:99].all() and not speaking(audio)[101:].any()


@pytest.mark.parametrize("content", [None, b"not audio"])
def test_without_the_file_a_generated_utterance_stands_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: bytes | None
) -> None:
    missing = tmp_path / "demo-question.flac"
    if content is not None:
        missing.write_bytes(content)
    monkeypatch.setattr(devices, "DEMO_QUESTION_FILE", missing)
    audio, name = demo_user_signal(RATE)
    assert name == "demo utterance (generated)"
    assert len(audio) == round(DEMO_SECONDS * RATE) and speaking(audio).any()
