"""STOI, MFCC + DTW and the mel filterbank used by training and the demo evaluation."""

import numpy as np

from app.train.features import dtw_cost, mel_filterbank, mfcc
from app.train.stoi import stoi


def _speechlike(seconds: float, rate: int, seed: int) -> np.ndarray:
    """Bursts of harmonic sound with pauses: enough structure for STOI's 384 ms segments."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    pitch = 120 + 40 * np.sin(2 * np.pi * 0.7 * t)
    voiced = sum(np.sin(2 * np.pi * k * np.cumsum(pitch) / rate) / k for k in range(1, 12))
    envelope = (np.sin(2 * np.pi * 2.5 * t) > -0.2).astype(float)
    return (0.1 * voiced * envelope + 0.003 * rng.standard_normal(len(t))).astype(np.float32)


def test_stoi_is_one_for_the_clean_signal_and_falls_with_noise() -> None:
    x = _speechlike(3.0, 24_000, 0)
    noise = np.random.default_rng(1).standard_normal(len(x)).astype(np.float32)
    assert stoi(x, x, 24_000) > 0.999
    light, heavy = stoi(x, x + 0.02 * noise, 24_000), stoi(x, x + 0.3 * noise, 24_000)
    assert 1.0 > light > heavy


def test_dtw_prefers_the_same_sound_said_slower() -> None:
    x = _speechlike(1.0, 24_000, 0)
    slower = np.interp(np.arange(0, len(x), 0.8), np.arange(len(x)), x).astype(np.float32)
    other = _speechlike(1.0, 24_000, 5)[::-1].copy()
    a, b, c = (mfcc(s, 24_000) for s in (x, slower, other))
    assert dtw_cost(a, a) == 0.0
    assert dtw_cost(a, b) < dtw_cost(a, c)


def test_mel_filters_cover_the_spectrum() -> None:
    filters = mel_filterbank(1024, 64, 24_000)
    assert filters.shape == (64, 513) and (filters.max(axis=1) > 0.5).all()
