"""STOI, short-time objective intelligibility (Taal et al., 2011), as the reference
implementation computes it: the codec's held-out figure while it trains and in `train eval`."""

from __future__ import annotations

import numpy as np
import soxr

_STOI_RATE, _STOI_FRAME, _STOI_FFT, _STOI_BANDS, _STOI_MIN_HZ = 10_000, 256, 512, 15, 150
_STOI_SEGMENT, _STOI_CLIP_DB, _STOI_RANGE_DB = 30, -15, 40


def _third_octaves() -> np.ndarray:
    """Band matrix [15, 257]: one third-octave band per row, FFT bins at 10 kHz / 512."""
    freqs = np.linspace(0, _STOI_RATE, _STOI_FFT + 1)[: _STOI_FFT // 2 + 1]
    k = np.arange(_STOI_BANDS, dtype=float)
    low = _STOI_MIN_HZ * 2.0 ** ((2 * k - 1) / 6)
    high = _STOI_MIN_HZ * 2.0 ** ((2 * k + 1) / 6)
    bands = np.zeros((_STOI_BANDS, len(freqs)))
    for i in range(_STOI_BANDS):
        bands[i, np.argmin((freqs - low[i]) ** 2) : np.argmin((freqs - high[i]) ** 2)] = 1
    return bands


def _frames(x: np.ndarray) -> np.ndarray:
    window = np.hanning(_STOI_FRAME + 2)[1:-1]
    hop = _STOI_FRAME // 2
    count = max(0, (len(x) - _STOI_FRAME) // hop + 1)
    return np.stack([x[i * hop : i * hop + _STOI_FRAME] * window for i in range(count)])


def _drop_silent_frames(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep the frames of x within 40 dB of its loudest, overlap-added back (both signals)."""
    fx, fy = _frames(x), _frames(y)
    energy = 20 * np.log10(np.linalg.norm(fx, axis=1) + np.finfo(float).eps)
    keep = energy > energy.max() - _STOI_RANGE_DB
    fx, fy = fx[keep], fy[keep]
    hop = _STOI_FRAME // 2
    length = (len(fx) - 1) * hop + _STOI_FRAME
    out_x, out_y = np.zeros(length), np.zeros(length)
    for i in range(len(fx)):
        out_x[i * hop : i * hop + _STOI_FRAME] += fx[i]
        out_y[i * hop : i * hop + _STOI_FRAME] += fy[i]
    return out_x, out_y


def stoi(clean: np.ndarray, processed: np.ndarray, sample_rate: int) -> float:
    """Short-time objective intelligibility of `processed` against `clean` (0..1)."""
    n = min(len(clean), len(processed))
    x = soxr.resample(clean[:n].astype(np.float64), sample_rate, _STOI_RATE)
    y = soxr.resample(processed[:n].astype(np.float64), sample_rate, _STOI_RATE)
    x, y = _drop_silent_frames(x, y)
    bands = _third_octaves()
    spectra = [np.abs(np.fft.rfft(_frames(s), n=_STOI_FFT)) ** 2 for s in (x, y)]
    x_bands, y_bands = (np.sqrt(bands @ s.T) for s in spectra)  # [15, frames]
    frames = x_bands.shape[1]
    if frames < _STOI_SEGMENT:
        raise ValueError("STOI needs at least 30 frames (about 0.4 s) of speech")
    clip = 10 ** (-_STOI_CLIP_DB / 20)
    scores = []
    for m in range(_STOI_SEGMENT, frames + 1):
        xs, ys = x_bands[:, m - _STOI_SEGMENT : m], y_bands[:, m - _STOI_SEGMENT : m]
        scale = np.linalg.norm(xs, axis=1, keepdims=True) / (
            np.linalg.norm(ys, axis=1, keepdims=True) + np.finfo(float).eps
        )
        ys = np.minimum(ys * scale, xs * (1 + clip))
        xs = xs - xs.mean(axis=1, keepdims=True)
        ys = ys - ys.mean(axis=1, keepdims=True)
        xs /= np.linalg.norm(xs, axis=1, keepdims=True) + np.finfo(float).eps
        ys /= np.linalg.norm(ys, axis=1, keepdims=True) + np.finfo(float).eps
        scores.append((xs * ys).sum(axis=1).mean())
    return float(np.mean(scores))
