"""How far the echo lags the canceller's reference, so that a jump in it can be followed at once.

AEC3 re-locks slowly after the echo's delay jumps: offline, with the reference exactly aligned,
a 70 ms jump kept ERLE under 25 dB for 1.3-1.8 s, while a new room response or a 4 dB louder
echo at the same delay cost nothing (docs/echo.md). So the canceller keeps the delay AEC3 sees
constant: this tracker finds the echo's lag behind the reference (GCC-PHAT between the
microphone and the reference AEC3 was given, both low-passed and decimated, over the last
0.4 s), and a lag that moved and stays moved is taken back out by shifting the reference.

The double-talk guard: a lag estimate counts only where the echo explains the microphone. The
reference, shifted by the estimated lag, must predict at least half the microphone's energy
over the window (`echo_share`: magnitude-squared coherence per frequency, weighted by the
microphone's spectrum, i.e. the share of its energy a linear filter from the reference can
account for). That holds when the echo is at least as loud as everything else the microphone
holds; the user's voice, noise, or a lag that is not the echo's bring it below. GCC-PHAT alone
cannot tell: its whitening gives the user's voiced harmonics as much weight as the echo's, and
two voices with steady pitches correlate at lags that are not the echo's. Only estimates that
pass, `repeats` of them within one run of sharp estimates at the same lag (a blurred peak or
another lag breaks the run; an estimate at the run's lag whose share falls short only does not
count), settle the first lag or move it. Breaking the run on a short share as well made the
move late: right after a jump the share hovers about the threshold (0.40-0.54 window after
window, the new room's tail is longer than a coherence segment), and a move waited 1.3 s for
two passes in a row, against 0.3 s for two passes in one run (docs/echo.md).

What it cannot tell: a shift of where the reference was placed (a render-time estimate jumping
and coming back) from a move of the room. It follows both, and after following the first on the
remote JACK loop ERLE stayed under 10 dB for the rest of the run. The devices' clocks now keep
the placement continuous through underruns and xruns (audio_io/streams.py, docs/echo.md), so
that what moves is the room.

The lags are measured against the reference as it was placed, not as shifted for AEC3: against
the shifted one, a delay that jumped, was followed and came back (a latency that grew by a JACK
period at an xrun and shrank again) put the echo before the reference, where no lag is searched
and AEC3 cannot cancel, and it was never followed back (tests/audio_io/test_echo_delay.py).

    tracker = DelayTracker(sample_rate=24000)
    moved = tracker.observe(reference_frame, mic_frame)  # seconds the echo's lag moved, or 0.0
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DelayConfig:
    decimation: int = 6  # 24 kHz to 4 kHz: speech's low band carries the correlation (2 kHz: worse)
    # Seconds of microphone correlated each time: longer is steadier but slower to see a move, and
    # every 80 ms more lets AEC3 start re-locking on its own, which it then undoes slowly
    # (measured: 0.6 s windows re-converged in 0.5-2.8 s after a 70 ms jump, 0.4 s in 0-1 s).
    window: float = 0.4
    max_lag: float = 0.45  # seconds: AEC3's own delay estimator reaches about this far
    # Peak over mean |correlation| for an estimate to count. Just after a jump the window holds
    # both paths and the peak is shared: 6.3-7.8 there, against 8-11 once the new path fills the
    # window; at 8 a move waited for that (offline, 20 jumps: 11 within 1 s; at 7: 18).
    confidence: float = 7.0
    min_power: float = 1e-6  # mean square of the reference (-60 dBFS) below which none is made
    # The double-talk guard: the share of the microphone's energy the reference at the estimated
    # lag explains, below which the estimate does not count (about half: the echo is at least
    # nearly as loud as the rest). Measured on espeak-ng voices: 0.59-0.83 (5th-95th
    # percentile) on echo alone in one room, 0.37-0.61 in a louder room with a longer tail, just
    # after a jump to it; median 0.16 with a user 10 dB louder than the echo (docs/echo.md).
    # 0.4 and 0.45 re-converged alike offline; no double talk moved the lag at either.
    echo_share: float = 0.45
    onset: float = 0.03  # seconds before the strongest peak searched for the first arrival
    onset_level: float = 0.6  # of the strongest peak, for an earlier one to be the first arrival
    segment: int = 256  # decimated samples per coherence segment (64 ms), half-overlapping
    moved: float = 0.02  # seconds: a lag this far from the settled one is a move
    agree: float = 0.005  # seconds: estimates this close are the same lag
    repeats: int = 2  # passing estimates, in one run at the same lag, that settle or move it


@dataclass(frozen=True)
class LagEstimate:
    lag: float  # seconds the echo comes after the reference
    sharpness: float  # GCC-PHAT peak over its mean magnitude
    share: float  # of the microphone's energy the reference at that lag explains (nan: unasked)


class DelayTracker:
    """Observes each frame's reference (what AEC3 was given) and microphone; says how far the
    echo's lag behind the reference has moved since it settled, once it is sure."""

    def __init__(
        self, sample_rate: int, config: DelayConfig | None = None, history: int = 256
    ) -> None:
        self.config = config = config or DelayConfig()
        self.rate = sample_rate / config.decimation
        self._mic_len = round(config.window * self.rate)
        self._lag_len = round(config.max_lag * self.rate)
        self._mic = np.zeros(0, np.float32)
        self._ref = np.zeros(0, np.float32)
        self.lag: float | None = None  # seconds: the settled lag (None until it first settles)
        self.first: float | None = None  # seconds: the lag it first settled on
        self.observed = 0  # frames observed
        # (frame observed, estimate) of the last `history` estimates, passed or not: why a
        # move came when it did
        self.estimates: deque[tuple[int, LagEstimate]] = deque(maxlen=history)
        self._run_lag: float | None = None  # the lag of the sharp estimates in a row (a run)
        self._passed: list[float] = []  # those of them that passed the double-talk guard

    def observe(self, reference: np.ndarray, mic: np.ndarray) -> float:
        """Seconds by which the settled lag moved (positive: the echo now comes later), or 0.0.
        `reference` is the far end as placed, before any shift that follows a move: the lags
        stay on one scale, so the history holds through a move and the next estimate is at
        once against the new lag."""
        self.observed += 1
        self._ref = np.concatenate([self._ref, self._decimate(reference)])
        self._ref = self._ref[-(self._mic_len + self._lag_len) :]
        self._mic = np.concatenate([self._mic, self._decimate(mic)])[-self._mic_len :]
        if len(self._ref) < self._mic_len + self._lag_len:
            return 0.0
        if np.mean(np.square(self._ref)) < self.config.min_power:
            return 0.0  # the far end was (nearly) silent: no echo to find, nothing to break
        estimate = self._estimate()
        self.estimates.append((self.observed - 1, estimate))
        config = self.config
        if self.lag is not None and abs(estimate.lag - self.lag) < config.moved:
            self._forget_run()  # where it settled: nothing to guard (the share was not computed)
            return 0.0
        if estimate.sharpness <= config.confidence:
            self._forget_run()  # no clear lag: the run starts again
            return 0.0
        if self._run_lag is not None and abs(estimate.lag - self._run_lag) > config.agree:
            self._forget_run()  # another lag
        self._run_lag = estimate.lag
        if estimate.share >= config.echo_share:
            self._passed.append(estimate.lag)
        if len(self._passed) < config.repeats:
            return 0.0
        lag = float(np.median(self._passed))
        self._forget_run()
        settled, self.lag = self.lag, lag
        if settled is None:
            self.first = lag
            return 0.0
        return lag - settled

    def _forget_run(self) -> None:
        self._run_lag = None
        self._passed.clear()

    def _estimate(self) -> LagEstimate:
        """The lag of the echo behind the reference over the window, how sharp its peak is, and
        how much of the microphone the reference at that lag explains."""
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
        sharpness = float(shifts[peak]) / (float(np.mean(np.abs(shifts))) + 1e-12)
        # The first arrival, not the strongest: whitened, a room's early reflections can peak
        # above the direct path, and which one does changes from window to window (measured:
        # 120-146 ms for one room whose direct path is at 120 ms). The direct path is the
        # earliest lag within `onset` before the peak that reaches `onset_level` of it.
        earliest = max(0, peak - round(self.config.onset * self.rate))
        close = np.flatnonzero(shifts[earliest:peak] >= self.config.onset_level * shifts[peak])
        if len(close):
            peak = earliest + int(close[0])
        lag = peak / self.rate
        share = float("nan")  # not computed where the lag is the settled one: not needed
        if self.lag is None or abs(lag - self.lag) >= self.config.moved:
            start = self._lag_len - peak
            share = _explained_share(
                self._ref[start : start + self._mic_len], self._mic, self.config.segment
            )
        return LagEstimate(lag, sharpness, share)

    def _decimate(self, x: np.ndarray) -> np.ndarray:
        d = self.config.decimation
        x = np.asarray(x, np.float32)[: len(x) // d * d]
        return x.reshape(-1, d).mean(axis=1)


def _explained_share(reference: np.ndarray, mic: np.ndarray, segment: int) -> float:
    """The share of `mic`'s energy that a linear filter from `reference` (aligned, same length)
    accounts for: sum over frequency of |S_rm|^2 / S_rr, over sum of S_mm, with Welch's averages
    over half-overlapping Hann segments. 1: the microphone is the reference filtered; about
    1/segments for unrelated signals."""
    hop = segment // 2
    starts = np.arange(0, len(mic) - segment + 1, hop)
    index = starts[:, None] + np.arange(segment)
    taper = np.hanning(segment).astype(np.float32)
    r = np.fft.rfft(reference[index] * taper, axis=1)
    m = np.fft.rfft(mic[index] * taper, axis=1)
    s_rm = np.sum(np.conj(r) * m, axis=0)
    s_rr = np.sum(np.abs(r) ** 2, axis=0)
    s_mm = np.sum(np.abs(m) ** 2, axis=0)
    explained = np.sum(np.abs(s_rm) ** 2 / (s_rr + 1e-12))
    return float(explained / (np.sum(s_mm) + 1e-12))
