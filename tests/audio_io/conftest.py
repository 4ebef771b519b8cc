"""Shared audio fixtures: a spoken utterance from espeak-ng, and test tones."""

import subprocess
from pathlib import Path

import numpy as np
import pytest

from audio_io.files import read_audio
from tests.jack_server import require_tool


def tone(frequency: float, seconds: float, sample_rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def dominant_frequency(audio: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.fft.rfftfreq(len(audio), 1 / sample_rate)[np.argmax(spectrum)])


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """espeak-ng's "hello there" as it writes it (22.05 kHz mono PCM 16)."""
    espeak = require_tool("espeak-ng", "espeak-ng")
    path = tmp_path_factory.mktemp("speech") / "hello.wav"
    subprocess.run([espeak, "-w", str(path), "hello there"], check=True, capture_output=True)
    return path


@pytest.fixture(scope="session")
def speech(speech_wav: Path) -> np.ndarray:
    """The utterance at 24 kHz, float32 mono."""
    return read_audio(speech_wav, 24000)
