"""How far the echo lags the canceller's reference, so that a jump in it can be followed at once.

AEC3 re-locks slowly after the echo's delay jumps: offline, with the reference exactly aligned,
a 70 ms jump kept ERLE under 25 dB for 1.3-1.8 s, while a new room response or a 4 dB louder
echo at the same delay cost nothing (docs/echo.md). So the canceller keeps the delay AEC3 sees
constant: this tracker finds the echo's lag behind the reference (GCC-PHAT between the
microphone and the reference AEC3 was given, both low-passed and decimated, over the last
second), and a lag that moved and stays moved is taken back out by shifting the reference.

    tracker = DelayTracker(sample_rate=24000)
    moved = tracker.observe(reference_frame, mic_frame)  # seconds the echo's lag moved, or 0.0
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DelayConfig:
    decimation: int = 6  # 24 kHz to 4 kHz: speech's low band carries the correlation
    window: float = 0.6  # seconds of microphone correlated each time (longer: slower to see a move)
    max_lag: float = 0.45  # seconds: AEC3's own delay estimator reaches about this far
    confidence: float = 8.0  # peak over mean |correlation| for an estimate to count
    min_power: float = 1e-6  # mean square of the reference (-60 dBFS) below which none is made
    moved: float = (
        0.02  # seconds: a lag this far from the settled one is a move (AEC3 follows less)
    )
    agree: float = 0.005  # seconds: estimates this close are the same lag
    repeats: int = 2  # estimates in a row that must agree before a move is taken


class DelayTracker:
    """Observes each frame's reference (what AEC3 was given) and microphone; says how far the
    echo's lag behind the reference has moved since it settled, once it is sure."""

    def __init__(self, sample_rate: int, config: DelayConfig | None = None) -> None:
        self.config = config = config or DelayConfig()
        self.rate = sample_rate / config.decimation
        self._mic_len = round(config.window * self.rate)
        self._lag_len = round(config.max_lag * self.rate)
        self._mic = np.zeros(0, np.float32)
        self._ref = np.zeros(0, np.float32)
        self.lag: float | None = None  # seconds: the settled lag (None until the first estimate)
        self._candidates: list[float] = []

    def observe(self, reference: np.ndarray, mic: np.ndarray) -> float:
        """Seconds by which the settled lag moved (positive: the echo now comes later), or 0.0.
        After a move the history is dropped: the reference it holds was taken the old way."""
        self._ref = np.concatenate([self._ref, self._decimate(reference)])
        self._ref = self._ref[-(self._mic_len + self._lag_len) :]
        self._mic = np.concatenate([self._mic, self._decimate(mic)])[-self._mic_len :]
        if len(self._ref) < self._mic_len + self._lag_len:
            return 0.0
        lag = self._estimate()
        if lag is None:
            return 0.0
        if self.lag is None:
            self.lag = lag
            return 0.0
        config = self.config
        if abs(lag - self.lag) < config.moved:
            self._candidates.clear()
            return 0.0
        if self._candidates and abs(lag - self._candidates[-1]) > config.agree:
            self._candidates.clear()
        self._candidates.append(lag)
        if len(self._candidates) < config.repeats:
            return 0.0
        moved = float(np.median(self._candidates)) - self.lag
        self._candidates.clear()
        self._ref = self._ref[:0]
        self._mic = self._mic[:0]
        return moved

    def _estimate(self) -> float | None:
        """The lag of the echo behind the reference over the window, if the peak stands out."""
        if np.mean(np.square(self._ref)) < self.config.min_power:
            return None  # the far end was (nearly) silent: no echo to find
        n = 1 << (len(self._ref) + self._mic_len).bit_length()
        ref = np.fft.rfft(self._ref, n)
        mic = np.fft.rfft(self._mic, n)
        cross = ref * np.conj(mic)  # xc[k] = sum_j mic[j] ref[j + k]
        cross /= np.abs(cross) + 1e-9  # PHAT: whiten, so the peak is sharp for speech
        xc = np.fft.irfft(cross, n)
        # mic[j] (at ref index j + lag_len) echoes ref[j + lag_len - lag]: k = lag_len - lag,
        # so lags 0..max_lag are k = lag_len..0.
        shifts = xc[: self._lag_len + 1][::-1]  # index = lag in samples
        peak = int(np.argmax(shifts))
        if not shifts[peak] > self.config.confidence * float(np.mean(np.abs(shifts))):
            return None
        return peak / self.rate

    def _decimate(self, x: np.ndarray) -> np.ndarray:
        d = self.config.decimation
        x = np.asarray(x, np.float32)[: len(x) // d * d]
        return x.reshape(-1, d).mean(axis=1)
