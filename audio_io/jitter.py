"""The speaker's jitter buffer: frames arrive in bursts from inference, the device pulls steadily.

Drop policy (docs/architecture.md: every queue is bounded and says what it drops):

- **Pre-roll.** Nothing plays until `preroll_frames` frames are buffered, at the start and again
  after every underrun; until then `read` returns silence. One frame of pre-roll absorbs the
  jitter of one late inference step at the cost of one frame (80 ms) of latency.
- **Underrun** (the device wants more samples than are buffered): `read` returns what there is,
  padded with silence, counts `underruns` and goes back to pre-rolling.
- **Overrun** (more than `max_frames` frames buffered, the writer runs ahead of the device): the
  OLDEST audio is dropped down to the pre-roll level (at least one frame), counted in `overruns`
  and `dropped_samples`. Lag therefore never exceeds `max_frames` frames: a late burst costs a
  skip in the audio, never a growing delay.

`read` never blocks (it runs in the PortAudio callback); `write` and `read` may run on different
threads, one lock guards the ring. Sizes are in samples at the buffer's own rate.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class JitterStats:
    buffered_samples: int
    underruns: int  # reads that ran dry mid-play (each one pads with silence and re-pre-rolls)
    overruns: int  # writes that pushed the level past max_frames (each one drops the oldest)
    dropped_samples: int  # audio thrown away by overruns
    played_samples: int  # written audio handed to the device
    silence_samples: int  # silence handed to the device (pre-roll and underrun padding)


class JitterBuffer:
    def __init__(self, frame_size: int, preroll_frames: int = 1, max_frames: int = 4) -> None:
        if frame_size <= 0:
            raise ValueError(f"frame_size must be positive, got {frame_size}")
        if not 0 <= preroll_frames <= max_frames or max_frames < 1:
            raise ValueError(
                f"need 0 <= preroll_frames <= max_frames and max_frames >= 1, "
                f"got preroll_frames={preroll_frames}, max_frames={max_frames}"
            )
        self.frame_size = frame_size
        self.preroll_samples = preroll_frames * frame_size
        self.max_samples = max_frames * frame_size
        # after an overrun keep this much: the pre-roll level, and never less than one frame
        self._keep_samples = max(preroll_frames, 1) * frame_size
        self._lock = threading.Lock()
        # room for a full buffer plus one more frame-sized write before the overrun check trims
        self._ring = np.zeros(self.max_samples + 2 * frame_size, dtype=np.float32)
        self._start = 0  # index of the oldest buffered sample in the ring
        self._count = 0  # buffered samples
        self._playing = False
        self.underruns = 0
        self.overruns = 0
        self.dropped_samples = 0
        self.played_samples = 0
        self.silence_samples = 0

    @property
    def buffered_samples(self) -> int:
        return self._count

    def stats(self) -> JitterStats:
        with self._lock:
            return JitterStats(
                buffered_samples=self._count,
                underruns=self.underruns,
                overruns=self.overruns,
                dropped_samples=self.dropped_samples,
                played_samples=self.played_samples,
                silence_samples=self.silence_samples,
            )

    def write(self, samples: np.ndarray) -> None:
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        with self._lock:
            capacity = len(self._ring)
            if len(samples) > capacity:  # a huge write: only its newest part could survive anyway
                skipped = len(samples) - capacity
                self._drop_oldest(self._count)
                self.dropped_samples += skipped
                samples = samples[skipped:]
            if self._count + len(samples) > capacity:
                self._drop_oldest(self._count + len(samples) - capacity)
            end = (self._start + self._count) % capacity
            first = min(len(samples), capacity - end)
            self._ring[end : end + first] = samples[:first]
            self._ring[: len(samples) - first] = samples[first:]
            self._count += len(samples)
            if self._count > self.max_samples:
                self.overruns += 1
                self._drop_oldest(self._count - self._keep_samples)

    def read(self, num_samples: int) -> np.ndarray:
        """Exactly `num_samples` float32 samples; silence where there is nothing to play."""
        out = np.zeros(num_samples, dtype=np.float32)
        with self._lock:
            if not self._playing:
                if self._count == 0 or self._count < self.preroll_samples:
                    self.silence_samples += num_samples
                    return out
                self._playing = True
            taken = min(num_samples, self._count)
            capacity = len(self._ring)
            first = min(taken, capacity - self._start)
            out[:first] = self._ring[self._start : self._start + first]
            out[first:taken] = self._ring[: taken - first]
            self._start = (self._start + taken) % capacity
            self._count -= taken
            self.played_samples += taken
            if taken < num_samples:
                self.underruns += 1
                self.silence_samples += num_samples - taken
                self._playing = False
        return out

    def clear(self) -> None:
        """Forget buffered audio (for example when the assistant is interrupted); keeps counts."""
        with self._lock:
            self._start = self._count = 0
            self._playing = False

    def _drop_oldest(self, num_samples: int) -> None:
        self._start = (self._start + num_samples) % len(self._ring)
        self._count -= num_samples
        self.dropped_samples += num_samples
