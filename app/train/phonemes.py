"""Phoneme labels for every codec frame, so that the codec's first codebook says what is said.

Mimi distils a self-supervised speech model (WavLM) into its first codebook, so that the codes
the LM reads first are about *what* is said more than *how*. No such model can be downloaded
here, and without it the demo LM could not learn the user's words from the codes (the acoustic
codes of many voices are too far apart: docs/demo-model-runs.md, "The second phase"). The dialogues
come with their text and word timings instead, so the codec learns phonemes: espeak-ng writes
each word as phonemes, they are spread evenly over the word's aligned span, and a training-only
head on the first codebook's output learns them (`antiphon train codec --phoneme-weight`).

A frame (80 ms) is labelled at SUBSTEPS evenly spaced instants, each with the phoneme spoken then
(SILENCE between words); the loss takes their mix as a soft target.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from model.errors import ConfigError

log = logging.getLogger(__name__)

SILENCE = 0  # label between words
UNKNOWN = -1  # a phoneme the table was not built with: no loss there
SUBSTEPS = 4  # instants labelled per frame
FILE = "phonemes.json"

_MARKS = re.compile(r"['`,%=;:|!]")  # stress, syllable and length marks of espeak's -x output


def normalize(word: str) -> str:
    """A word as the table keys it: lower case, punctuation stripped ("Zero," -> "zero")."""
    return re.sub(r"[^\w'-]", "", word.lower()).strip("'-")


def phonemize(word: str) -> list[str]:
    """espeak-ng's phonemes of one word (American English, stress and length marks dropped)."""
    program = shutil.which("espeak-ng")
    if program is None:
        raise ConfigError("espeak-ng is not installed (scripts/setup.sh installs it)")
    out = subprocess.run(
        [program, "-q", "-x", "--sep=_", "-v", "en-us", word],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    phones = (_MARKS.sub("", p) for p in out.replace("\n", "_").replace(" ", "_").split("_"))
    return [p for p in phones if p]


class PhonemeTable:
    """Words -> phoneme ids (1..; SILENCE is 0), saved with the codec run it labels."""

    def __init__(self, inventory: Sequence[str], words: dict[str, list[str]]) -> None:
        self.inventory = list(inventory)
        self.words = dict(words)
        self._ids = {p: i + 1 for i, p in enumerate(self.inventory)}

    @property
    def classes(self) -> int:
        """Label classes, SILENCE included."""
        return len(self.inventory) + 1

    @classmethod
    def build(cls, words: Iterable[str], progress: bool = True) -> PhonemeTable:
        keys = sorted({normalize(w) for w in words} - {""})
        table = {w: phonemize(w) for w in tqdm(keys, desc="phonemes", disable=not progress)}
        inventory = sorted({p for phones in table.values() for p in phones})
        log.info("phonemes: %d words, %d phonemes", len(table), len(inventory))
        return cls(inventory, table)

    def save(self, folder: Path) -> None:
        data = {"inventory": self.inventory, "words": self.words}
        (folder / FILE).write_text(json.dumps(data, indent=0))

    @classmethod
    def load(cls, folder: Path) -> PhonemeTable:
        data = json.loads((folder / FILE).read_text())
        return cls(data["inventory"], data["words"])

    def ids(self, word: str) -> list[int]:
        """A word's phoneme ids (UNKNOWN for a phoneme outside the inventory)."""
        key = normalize(word)
        if key not in self.words:
            self.words[key] = phonemize(key) if key else []
        return [self._ids.get(p, UNKNOWN) for p in self.words[key]]

    def frame_labels(
        self, alignments: Sequence[Sequence], speaker: str, num_frames: int, frame_rate: float
    ) -> np.ndarray:
        """[num_frames, SUBSTEPS] int16: the phoneme at each labelled instant of each frame.

        Each of `speaker`'s words [text, [start, end], speaker] spreads its phonemes evenly over
        [start, end]; instants outside every word are SILENCE."""
        labels = np.full((num_frames, SUBSTEPS), SILENCE, dtype=np.int16)
        times = (np.arange(num_frames * SUBSTEPS) + 0.5) / (SUBSTEPS * frame_rate)
        flat = labels.reshape(-1)
        for text, (start, end), who in alignments:
            phones = self.ids(text) if who == speaker else []
            if not phones or end <= start:
                continue
            inside = np.nonzero((times >= start) & (times < end))[0]
            share = (times[inside] - start) / (end - start)
            flat[inside] = np.asarray(phones, dtype=np.int16)[(share * len(phones)).astype(int)]
        return labels


def load_or_build(folder: Path, alignments: Iterable[Sequence], progress: bool) -> PhonemeTable:
    """The run's table: read from the run folder, or built from the words of `alignments`."""
    if (folder / FILE).is_file():
        return PhonemeTable.load(folder)
    table = PhonemeTable.build((a[0] for a in alignments), progress)
    table.save(folder)
    return table
