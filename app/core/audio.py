"""The audio of a conversation: its format, and the level of a frame."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AudioFormat:
    """What a conversation exchanges: the rate and the samples in one frame."""

    sample_rate: int
    frame_size: int

    @property
    def frame_duration(self) -> float:
        return self.frame_size / self.sample_rate


def level_db(pcm: np.ndarray) -> float:
    """RMS level in dBFS (-120 for silence)."""
    rms = float(np.sqrt(np.mean(np.square(pcm, dtype=np.float64)))) if len(pcm) else 0.0
    return max(-120.0, 20 * np.log10(rms + 1e-12))
