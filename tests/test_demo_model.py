"""End to end with the shipped demo model: a question spoken by espeak-ng goes through
`antiphon run` (the real command, real files) and the right answer comes out in the inner
monologue. The questions are phrased the way a person would ask them, not taken from the
training data; the voice is espeak-ng's default English one.

Skipped (with the reason) only while no trained model is bundled in app/assets/.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from app.core.models import ASSETS, MODEL_ENV
from model.bundle import CONFIG_FILE

pytestmark = [
    pytest.mark.skipif(
        not (ASSETS / CONFIG_FILE).is_file(), reason="no demo model bundled in app/assets yet"
    ),
    pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed"),
]

# (question, words any one of which in the reply's text makes it right)
QUESTIONS = [
    ("What is two plus three?", ("five",)),
    ("What's your name?", ("antiphon",)),
    ("Is fire cold?", ("no",)),
    ("Can you count from one to four?", ("four",)),
    ("How do you spell dog?", ("d o g", "d, o, g")),
]


def say(text: str, path: Path) -> float:
    """espeak-ng speaks `text` into `path` with a second of silence before and four after;
    returns when the question ends, in seconds."""
    spoken = path.with_suffix(".espeak.wav")
    subprocess.run(["espeak-ng", "-w", str(spoken), text], check=True)
    pcm, rate = soundfile.read(spoken, dtype="float32")
    silence = np.zeros(rate, dtype=np.float32)
    soundfile.write(path, np.concatenate([silence, pcm, np.tile(silence, 4)]), rate)
    return 1.0 + len(pcm) / rate


def reply_after(text_file: Path, start: float) -> str:
    """What the model said in its inner monologue from `start` seconds on, lower case, words
    only."""
    with text_file.open() as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    text = "".join(row["text"] for row in rows if float(row["start_s"]) >= start)
    return " " + " ".join(re.sub(r"[^a-z0-9 ]", " ", text.lower()).split()) + " "


@pytest.mark.parametrize(("question", "accept"), QUESTIONS, ids=[q for q, _ in QUESTIONS])
def test_a_spoken_question_gets_the_right_answer(tmp_path, question, accept):
    wav = tmp_path / "question.wav"
    end = say(question, wav)
    reply = tmp_path / "reply.wav"
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "run", str(wav), str(reply), "--seed", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if k != MODEL_ENV},  # as a user runs it
    )
    assert done.returncode == 0, done.stderr
    text = reply_after(reply.with_suffix(".text.tsv"), end - 0.5)
    assert any(f" {word} " in text for word in accept), f"{question!r} got {text!r}"
    # the answer is spoken, not only written
    pcm, rate = soundfile.read(reply, dtype="float32")
    after = pcm[int(end * rate) :]
    assert np.sqrt(np.mean(after**2)) > 0.005, "the reply is silent"
