"""Spectral features shared by codec training and the demo evaluation: mel filterbanks,
log-mel spectrograms, MFCCs, dynamic time warping and edit distance (numpy and torch, no
torchaudio)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import torch


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(n_fft: int, n_mels: int, sample_rate: int) -> np.ndarray:
    """Triangular HTK-mel filters [n_mels, n_fft // 2 + 1] from 0 Hz to Nyquist."""
    bins = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(0.0, _hz_to_mel(np.array(sample_rate / 2)), n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None] - lower) / (centre - lower)
    falling = (upper - bins[None]) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


class LogMel(torch.nn.Module):
    """log(mel power + eps) of audio [..., samples] -> [..., n_mels, frames]."""

    def __init__(self, sample_rate: int, n_fft: int, n_mels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.n_fft, self.hop, self.eps = n_fft, n_fft // 4, eps
        self.window: torch.Tensor
        self.filters: torch.Tensor
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        filters = torch.from_numpy(mel_filterbank(n_fft, n_mels, sample_rate))
        self.register_buffer("filters", filters, persistent=False)

    def forward(self, pcm: torch.Tensor) -> torch.Tensor:
        shape = pcm.shape[:-1]
        spec = torch.stft(
            pcm.reshape(-1, pcm.shape[-1]).float(),
            self.n_fft,
            self.hop,
            window=self.window,
            return_complex=True,
        )  # [N, bins, frames]
        mel = self.filters @ spec.abs().pow(2)
        return torch.log(mel + self.eps).view(*shape, *mel.shape[-2:])


class MultiResolutionMelLoss(torch.nn.Module):
    """Mean L1 distance of log-mel spectrograms at several window sizes."""

    def __init__(
        self,
        sample_rate: int,
        scales: tuple[tuple[int, int], ...] = ((256, 32), (512, 64), (1024, 64), (2048, 128)),
    ) -> None:
        super().__init__()
        self.scales = torch.nn.ModuleList(LogMel(sample_rate, n, m) for n, m in scales)

    def forward(self, estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        losses = [(mel(estimate) - mel(target)).abs().mean() for mel in self.scales]
        return torch.stack(losses).mean()


def mfcc(pcm: np.ndarray, sample_rate: int, n_mfcc: int = 13, n_mels: int = 40) -> np.ndarray:
    """MFCCs [frames, n_mfcc] with 25 ms windows every 10 ms, mean-normalised per coefficient."""
    n_fft, hop = int(0.025 * sample_rate), int(0.010 * sample_rate)
    if len(pcm) < n_fft:
        pcm = np.pad(pcm, (0, n_fft - len(pcm)))
    count = 1 + (len(pcm) - n_fft) // hop
    frames = np.lib.stride_tricks.sliding_window_view(pcm, n_fft)[::hop][:count]
    size = 1 << (n_fft - 1).bit_length()
    power = np.abs(np.fft.rfft(frames * np.hanning(n_fft), n=size)) ** 2
    logmel = np.log(power @ mel_filterbank(size, n_mels, sample_rate).T + 1e-8)
    k = np.arange(n_mels)
    dct = np.cos(np.pi / n_mels * (k[None] + 0.5) * np.arange(n_mfcc)[:, None])  # DCT-II
    coefficients = logmel @ dct.T
    return coefficients - coefficients.mean(axis=0, keepdims=True)


def dtw_cost(a: np.ndarray, b: np.ndarray) -> float:
    """Dynamic time warping between feature sequences a [n, d] and b [m, d] (Euclidean local
    cost, steps (1,0), (0,1), (1,1)), normalised by n + m. Computed one anti-diagonal at a
    time: each cell needs only the two diagonals before it."""
    local = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=-1))  # [n, m]
    n, m = local.shape
    cost = np.full((n + 1, m + 1), np.inf)
    cost[0, 0] = 0.0
    for d in range(2, n + m + 1):  # cells (i, j), 1-based, with i + j = d
        i = np.arange(max(1, d - m), min(n, d - 1) + 1)
        j = d - i
        best = np.minimum(np.minimum(cost[i - 1, j], cost[i, j - 1]), cost[i - 1, j - 1])
        cost[i, j] = best + local[i - 1, j - 1]
    return float(cost[n, m] / (n + m))


def edit_distance(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """Levenshtein distance between two sequences (words, phoneme ids)."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        diagonal, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (x != y))
    return row[-1]
