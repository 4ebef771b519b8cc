"""Block-size and rate conversion between a sound device and the codec's 1920-sample frames.

A device delivers blocks of whatever size and rate it likes; the codec wants 24 kHz mono frames of
exactly 1920 samples. `to_mono` mixes down, `StreamResampler` converts the rate block by block
(its concatenated output equals resampling the whole signal at once), `Reframer` cuts frames;
`resample` converts a whole signal to an exact length.
"""

from __future__ import annotations

import numpy as np
import soxr


def to_mono(block: np.ndarray) -> np.ndarray:
    """float32 [N] from [N] or [N, C] (the mean of the channels); always a new array."""
    block = np.asarray(block, dtype=np.float32)
    if block.ndim == 1:
        return block.copy()
    if block.ndim != 2:
        raise ValueError(f"audio block must be [N] or [N, C], got shape {block.shape}")
    if block.shape[1] == 1:
        return block[:, 0].copy()
    return block.mean(axis=1, dtype=np.float32)


class Reframer:
    """Cuts a stream of sample blocks into frames of exactly `frame_size` samples.

    `push` returns the frames completed by a block (zero, one or several) and keeps the remainder
    for the next call; nothing is dropped or padded.
    """

    def __init__(self, frame_size: int) -> None:
        if frame_size <= 0:
            raise ValueError(f"frame_size must be positive, got {frame_size}")
        self.frame_size = frame_size
        self._pending = np.zeros(0, dtype=np.float32)

    @property
    def pending(self) -> int:
        """Samples held back, waiting for the rest of their frame."""
        return len(self._pending)

    def push(self, samples: np.ndarray) -> list[np.ndarray]:
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        data = np.concatenate([self._pending, samples]) if len(self._pending) else samples
        count = len(data) // self.frame_size
        end = count * self.frame_size
        frames = [data[i : i + self.frame_size].copy() for i in range(0, end, self.frame_size)]
        self._pending = data[end:].copy()
        return frames

    def reset(self) -> None:
        self._pending = np.zeros(0, dtype=np.float32)


class StreamResampler:
    """Mono float32 rate conversion block by block (soxr, high quality); a copy when rates match.

    soxr holds back a few milliseconds of filter history and emits in bursts: a 3840-sample block
    at 48 kHz gives about 1660 samples at 24 kHz most of the time and more now and then, so the
    count per call varies but the total keeps pace. `flush()` returns the held-back tail.
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate} -> {out_rate}")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream = (
            None
            if in_rate == out_rate
            else soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality="HQ")
        )

    @property
    def passthrough(self) -> bool:
        return self._stream is None

    def process(self, samples: np.ndarray) -> np.ndarray:
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if self._stream is None:
            return samples.copy()
        return self._stream.resample_chunk(samples)

    def flush(self) -> np.ndarray:
        """The samples still held back; the stream is ready for a new signal afterwards."""
        if self._stream is None:
            return np.zeros(0, dtype=np.float32)
        tail = self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        self._stream.clear()
        return tail


def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Whole-signal rate conversion (soxr, high quality, as `StreamResampler` does it) to exactly
    round(len * to_rate / from_rate) samples."""
    if from_rate == to_rate:
        return audio
    resampler = StreamResampler(from_rate, to_rate)
    out = np.concatenate([resampler.process(audio), resampler.flush()])
    length = round(len(audio) * to_rate / from_rate)
    return np.pad(out[:length], (0, max(0, length - len(out))))
