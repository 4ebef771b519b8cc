"""The inner monologue against the assistant's audio: how much text, and where it falls."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .turns import Piece, Segment, TurnRules, count_words


def monologue(
    pieces: Sequence[Piece],
    assistant: Sequence[Segment],
    duration: float,
    frame_duration: float,
    rules: TurnRules | None = None,
) -> dict[str, Any]:
    """Text tokens per second, and how text and the assistant's speech line up, on frames.

    text_while_silent: share of frames with text where the assistant is silent (no speech
    within `text_lead_s`: the text may run a little ahead of the audio).
    speech_without_text: share of the assistant's speech frames with no text within
    `text_cover_s` (text is sparse, one piece per word or less, hence the window).
    """
    rules = rules or TurnRules()
    frames = max(1, math.ceil(duration / frame_duration))
    centers = (np.arange(frames) + 0.5) * frame_duration
    speech = np.zeros(frames, dtype=bool)
    for start, end in assistant:
        speech |= (centers >= start) & (centers < end)
    text = np.zeros(frames, dtype=bool)
    for piece in pieces:
        text[min(frames - 1, max(0, int(piece.time / frame_duration)))] = True
    near_speech = _dilate(speech, math.ceil(rules.text_lead_s / frame_duration))
    near_text = _dilate(text, math.ceil(rules.text_cover_s / frame_duration))
    words = count_words(pieces, -math.inf, math.inf, 0.0) or 0
    return {
        "pieces": len(pieces),
        "words": words,
        "tokens_per_s": len(pieces) / duration if duration > 0 else None,
        "text_frames": int(text.sum()),
        "text_while_silent": _share(text & ~near_speech, text),
        "speech_without_text": _share(speech & ~near_text, speech),
    }


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    if radius <= 0:
        return mask.copy()
    kernel = np.ones(2 * radius + 1)
    # "full" and cut: mode="same" returns the kernel's length when the mask is the shorter
    return np.convolve(mask.astype(float), kernel, mode="full")[radius : radius + len(mask)] > 0


def _share(part: np.ndarray, whole: np.ndarray) -> float | None:
    n = int(whole.sum())
    return float(part.sum()) / n if n else None
