"""End to end with the shipped demo model: questions spoken by espeak-ng go through `antiphon
run` (the real command, real files), and the answers come out in the inner monologue and in
speech. The questions are phrased the way a person would ask them, not taken from the training
data; the voice is espeak-ng's default English one. Each is asked with several seeds (the model
samples), and the transcript is printed (`pytest -s`).

The goal is every answer right. The model shipped today gets most of them wrong (its card,
app/assets/MODEL_CARD.md, has the held-out figures), so the test holds it to what it did when it
was shipped, as floors: a change to the pipeline that makes it hear or answer worse fails here.
Raise the floors, and hold right answers to one, with each better model.

Skipped (with the reason) only where no trained model is bundled in app/assets/.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
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

NUMBER = (
    "(zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|"
    "fifteen|sixteen|seventeen|eighteen|nineteen|twenty)"
)
# (question, the right answer, an answer of the right kind), as patterns on the reply's words
# (lower case, one space between, a space at each end).
QUESTIONS = [
    ("What is two plus three?", "(^| is) five ", f" {NUMBER} "),
    ("What's your name?", " antiphon ", " (i am|my name|antiphon) "),
    ("Is fire cold?", "^ no ", "^ (yes|no) "),
    # a count that stops at four; any run of three numbers is a count
    ("Can you count from one to four?", f" one two three four (?!{NUMBER} )", f"( {NUMBER}){{3}} "),
    ("How do you spell dog?", " d o g ", "( [a-z]){3} "),
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


SEEDS = (1, 2, 3, 4, 5, 6)
# Floors, of the len(QUESTIONS) * len(SEEDS) conversations, from the shipped model's own run
# (the ninth run's LM; 2026-12-03, AMD EPYC Zen 5, one thread, torch 2.13): it said something
# after 25 of the 30 questions and gave an answer of the right kind (a number, a count, letters)
# 18 times, but the right answer only twice ("Three plus two is five.", "I am Antiphon."): it
# counts on past four, spells dog with other letters and answers "Is fire cold?" with silence or
# a greeting. The seeds repeat a conversation exactly only on the same CPU, threads and torch, so
# the floors leave room for another machine's draws; at 2 in 30, a floor on right answers would
# fail on some machines by chance alone, so they are printed, not held to, until a model gets
# enough right for a floor that holds everywhere.
ANSWERED_AT_LEAST = 20
RIGHT_KIND_AT_LEAST = 12


@dataclass
class Reply:
    question: str
    seed: int
    text: str  # the inner monologue from the end of the question on
    right: bool
    right_kind: bool
    rms: float  # of the reply's audio from the end of the question on


def ask(folder: Path, question: str, right: str, kind: str, seed: int) -> Reply:
    wav = folder / "question.wav"
    end = say(question, wav)
    reply = folder / f"reply-{seed}.wav"
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "run", str(wav), str(reply), "--seed", str(seed)],
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if k != MODEL_ENV},  # as a user runs it
    )
    assert done.returncode == 0, done.stderr
    text = reply_after(reply.with_suffix(".text.tsv"), end - 0.5)
    pcm, rate = soundfile.read(reply, dtype="float32")
    rms = float(np.sqrt(np.mean(pcm[int(end * rate) :] ** 2)))
    return Reply(
        question, seed, text.strip(), bool(re.search(right, text)), bool(re.search(kind, text)), rms
    )


@pytest.fixture(scope="module")
def replies(tmp_path_factory: pytest.TempPathFactory) -> list[Reply]:
    out = []
    for n, (question, right, kind) in enumerate(QUESTIONS):
        folder = tmp_path_factory.mktemp(f"question{n}")
        out += [ask(folder, question, right, kind, seed) for seed in SEEDS]
    print("\n" + "\n".join(
        f"{r.question!r} seed {r.seed}: {r.text!r}"
        + ("  (right)" if r.right else "  (of the right kind)" if r.right_kind else "")
        for r in out
    ))  # fmt: skip
    return out


@pytest.mark.slow
def test_spoken_questions_get_spoken_answers(replies: list[Reply]) -> None:
    answered = [r for r in replies if r.text]
    assert len(answered) >= ANSWERED_AT_LEAST, [(r.question, r.seed) for r in replies if not r.text]
    # what it writes, it says: an answer is spoken, not only written
    silent = [(r.question, r.seed, r.text) for r in answered if r.rms <= 0.005]
    assert not silent, f"answers written but not spoken: {silent}"


@pytest.mark.slow
def test_answers_are_of_the_right_kind_as_often_as_when_shipped(replies: list[Reply]) -> None:
    kind = [(r.question, r.seed, r.text) for r in replies if r.right_kind]
    assert len(kind) >= RIGHT_KIND_AT_LEAST, f"{len(kind)} of the right kind: {kind}"
