"""Speech with word timings from three synthesizers: `speak(text, voice)` picks the voice's.

Why several: a model that has heard only espeak-ng's formant speech learns espeak-ng, not
speech. espeak-ng runs as a library (`app.train.espeak`), flite and festival as programs
(`app.train.speech_cmu`); `app.train.utterance` holds what they all return. A voice's `tract`
makes new speakers of them: the synthesizers have men's voices mostly, and people do not.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import soxr

from . import speech_cmu
from .espeak import synthesizer
from .utterance import SAMPLE_RATE, SpeechError, Utterance, Voice, Word

__all__ = ["SAMPLE_RATE", "SpeechError", "Utterance", "Voice", "Word", "speak", "synthesizer"]


def speak(text: str, voice: Voice) -> Utterance:
    """`text` in `voice`, whichever synthesizer it belongs to."""
    if voice.tract == 1.0:
        return _synthesize(text, voice)
    # said slower by `tract`, then resampled to `tract` times fewer samples: played at
    # SAMPLE_RATE, pitch and formants rise by `tract` and the pace is the one asked for
    slower = replace(voice, speed=max(80, round(voice.speed / voice.tract)), tract=1.0)
    said = _synthesize(text, slower)
    pcm = soxr.resample(said.pcm, SAMPLE_RATE, SAMPLE_RATE / voice.tract).astype(np.float32)
    duration = len(pcm) / SAMPLE_RATE  # soxr rounds the length to a whole sample

    def scaled(time: float) -> float:
        return min(time / voice.tract, duration)

    words = [replace(w, start=scaled(w.start), end=scaled(w.end)) for w in said.words]
    return Utterance(pcm, words)


def _synthesize(text: str, voice: Voice) -> Utterance:
    if voice.engine == "espeak":
        return synthesizer().synthesize(text, voice)
    if voice.engine == "flite":
        return speech_cmu.flite(text, voice)
    if voice.engine == "festival":
        return speech_cmu.festival(text, voice)
    raise SpeechError(f"unknown synthesizer {voice.engine!r} (espeak, flite or festival)")
