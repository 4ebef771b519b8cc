"""Test-wide setup, and the spoken utterance several test packages use."""

import os
import subprocess
from pathlib import Path

# The reference `moshi` package (a test-only oracle) compiles a few functions lazily with
# torch.compile; that is slow and pointless for CPU parity tests. Set before anything imports it.
os.environ.setdefault("NO_TORCH_COMPILE", "1")
# One torch thread per test process, and per process a test starts (a node, `antiphon talk`):
# on a 2-core machine the suite took 814 s with torch's default threads and 185 s with one, as
# the processes of a test compete for the same cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Tests of the pipeline (talk, run, serve: in-process and in the processes they start) use the
# tiny random model when they name none: the bundled demo model is not real time on one thread.
# The tests of the demo model itself name it (tests/test_demo_model.py).
os.environ["ANTIPHON_MODEL"] = "random"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from audio_io.files import read_audio  # noqa: E402
from tests.jack_server import require_tool  # noqa: E402
from tests.reference import require_reference  # noqa: E402

torch.set_num_threads(1)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Parity tests skip, with the reason, where the reference package is not installed."""
    if item.get_closest_marker("parity") is not None:
        require_reference()


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
