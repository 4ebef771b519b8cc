"""Speech with word timings from three synthesizers: `speak(text, voice)` picks the voice's.

Why several: a model that has heard only espeak-ng's formant speech learns espeak-ng, not
speech. espeak-ng runs as a library (`app.train.espeak`), flite and festival as programs
(`app.train.speech_cmu`); `app.train.utterance` holds what they all return.
"""

from __future__ import annotations

from . import speech_cmu
from .espeak import synthesizer
from .utterance import SAMPLE_RATE, SpeechError, Utterance, Voice, Word

__all__ = ["SAMPLE_RATE", "SpeechError", "Utterance", "Voice", "Word", "speak", "synthesizer"]


def speak(text: str, voice: Voice) -> Utterance:
    """`text` in `voice`, whichever synthesizer it belongs to."""
    if voice.engine == "espeak":
        return synthesizer().synthesize(text, voice)
    if voice.engine == "flite":
        return speech_cmu.flite(text, voice)
    if voice.engine == "festival":
        return speech_cmu.festival(text, voice)
    raise SpeechError(f"unknown synthesizer {voice.engine!r} (espeak, flite or festival)")
