"""What a synthesizer gives: speech with the time of every word, and the voice it was asked for.

Every synthesizer (espeak-ng in `app.train.espeak`; flite and festival in `app.train.speech_cmu`)
returns its audio and word start times through `finish_utterance`, so all three end words and
trim silence alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.errors import AntiphonError

SAMPLE_RATE = 24_000  # what the codec takes


class SpeechError(AntiphonError):
    """espeak-ng is missing or refused a request."""


@dataclass(frozen=True)
class Voice:
    """One voice setting of one synthesizer: accent or speaker, variant (timbre), speed, pitch."""

    # espeak-ng: a voice ("en-us", "en-gb-scotland", ...); flite: a voice ("awb", "rms", ...);
    # festival: the name after voice_ ("kal_diphone", "cmu_us_slt_arctic_hts", ...)
    language: str
    variant: str | None = None  # espeak-ng only: a file of voices/!v: "f3", "m1", "klatt2", ...
    speed: int = 165  # words per minute (espeak's -s, 80..450; flite and festival stretch to it)
    pitch: int = 50  # 0..99 (espeak's -p; espeak-ng only)
    pitch_range: int = 50  # intonation range 0..99 (0 is monotone; espeak-ng only)
    engine: str = "espeak"  # "espeak", "flite" or "festival" (app.train.speech_cmu)
    # The speech resampled so that pitch and formants are `tract` times higher at the same
    # pace, as from a vocal tract that much shorter (1.2: about a woman's formants from a
    # man's; her pitch is higher still); any synthesizer (`speech.speak`)
    tract: float = 1.0

    @property
    def name(self) -> str:
        """The synthesizer's voice (espeak-ng looks it up by this name); `tract` is not in it."""
        if self.engine != "espeak":
            return f"{self.engine}:{self.language}"
        return self.language if self.variant is None else f"{self.language}+{self.variant}"


@dataclass(frozen=True)
class Word:
    text: str  # as written in the input, punctuation included ("five?")
    start: float  # seconds from the start of the utterance
    end: float


@dataclass
class Utterance:
    pcm: np.ndarray  # float32 [samples] at SAMPLE_RATE, leading and trailing silence trimmed
    words: list[Word]

    @property
    def duration(self) -> float:
        return len(self.pcm) / SAMPLE_RATE


def finish_utterance(pcm: np.ndarray, tokens: list[str], starts: list[float]) -> Utterance:
    """Words from their start times (each ends at its last voiced 10 ms before the next one
    starts), then leading and trailing silence cut: what every synthesizer returns."""
    duration = len(pcm) / SAMPLE_RATE
    ends = [*starts[1:], duration]
    words = [
        Word(token, start, _voiced_end(pcm, start, end))
        for token, start, end in zip(tokens, starts, ends, strict=True)
    ]
    return _trim(pcm, words)


_ANALYSIS = SAMPLE_RATE // 100  # 10 ms frames for the silence analysis
_SILENCE = 10 ** (-45 / 20)  # RMS below -45 dBFS is silence


def _voiced_end(pcm: np.ndarray, start: float, end: float) -> float:
    """The end of the last voiced 10 ms inside [start, end): a word's end, pause excluded."""
    a, b = int(start * SAMPLE_RATE), int(end * SAMPLE_RATE)
    segment = pcm[a:b]
    n = len(segment) // _ANALYSIS
    if n == 0:
        return end
    rms = np.sqrt((segment[: n * _ANALYSIS].reshape(n, -1) ** 2).mean(axis=1))
    voiced = np.flatnonzero(rms > _SILENCE)
    return end if len(voiced) == 0 else start + float(voiced[-1] + 1) * _ANALYSIS / SAMPLE_RATE


def _trim(pcm: np.ndarray, words: list[Word]) -> Utterance:
    """Cut leading and trailing silence, shifting word times to match."""
    n = len(pcm) // _ANALYSIS
    rms = np.sqrt((pcm[: n * _ANALYSIS].reshape(n, -1) ** 2).mean(axis=1)) if n else np.zeros(0)
    voiced = np.flatnonzero(rms > _SILENCE)
    if len(voiced) == 0:
        return Utterance(pcm, words)
    first = max(0, voiced[0] - 1) * _ANALYSIS  # keep 10 ms of lead-in
    last = min(len(pcm), (voiced[-1] + 2) * _ANALYSIS)
    shift = first / SAMPLE_RATE
    limit = (last - first) / SAMPLE_RATE
    moved = [
        Word(w.text, min(max(0.0, w.start - shift), limit), min(max(0.0, w.end - shift), limit))
        for w in words
    ]
    return Utterance(pcm[first:last].copy(), moved)
