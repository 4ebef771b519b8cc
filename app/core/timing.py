"""The one timing summary of a conversation, whichever command ran it.

It is meta.json's `summary` in every recording (`talk`, `talk --remote`, `run`, `serve`) and
the `runtime` figures of `antiphon eval`, computed from the same per-frame figures:

    timings = Timings()
    timings.add_stats(frame_stats)                  # per frame (or add(compute_ms=..., ...))
    timings.counters["dropped_input"] = 3           # running totals, as they stand at the end
    summary = timings.summary(frame_duration, wall_s=12.3)

The summary:

    frames                          frames stepped
    frame_ms                        the frame period (80 ms)
    compute_ms                      {mean, median, p90, p99, max}: encode + LM step + decode
    real_time_factor                median compute / frame_ms (above 1: slower than real time)
    frames_slower_than_real_time
    median_encode_ms, median_lm_ms, median_decode_ms
    dropped_input                   microphone (or client) frames dropped to keep up
    underruns, overruns, xruns      the speaker's: silence played, reply audio dropped, device
    latency_ms                      {...} microphone to speaker; null where nothing measures it
    node_ms                         {...} (serve, talk --remote) a frame's arrival to its reply
    network_ms, network_share       (talk --remote) the round trip less the node's time
    wall_s, wall_real_time_factor   (run) the whole run's wall time

`node_ms`, `network_ms` and `wall_s` appear only where a command measures them, and a command
may add a few keys of its own (`summary(**extra)`: serve's missing frames and errors).

Memory is bounded, whatever a conversation's length: each figure is a `Series` that counts, sums
and keeps the largest of every value, but holds at most KEPT values themselves (all of them up
to KEPT frames, about 5.5 minutes; after that an even sample, every 2nd, 4th, ... frame). A node
that serves for days holds no more per session than after minutes (issue 13: 16 sessions of
`antiphon serve` grew by ~1.4 MB a minute, five Python floats a frame). `frames`, `mean`, `max`
and the count of frames slower than real time (a whole number of milliseconds, 80) are exact at
any length; medians and percentiles are exact up to KEPT frames and read from the even sample
beyond.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .events import FrameStats

COUNTERS = ("dropped_input", "underruns", "overruns", "xruns")
KEPT = 4096  # values a Series holds at most (a power of two: 32 kB of doubles)
WHOLE_MS = 1000  # a Series counts its values per whole millisecond up to this (4 kB)


def distribution(values: Sequence[float] | np.ndarray) -> dict[str, float] | None:
    """mean, median, p90, p99 and max; None for no values."""
    if not len(values):
        return None
    data = np.asarray(values, dtype=float)
    return {
        "mean": float(data.mean()),
        "median": float(np.median(data)),
        "p90": float(np.percentile(data, 90)),
        "p99": float(np.percentile(data, 99)),
        "max": float(data.max()),
    }


class Series:
    """One per-frame figure of a conversation (compute_ms, say), in memory bounded by `kept`.

    Up to `kept` values, all of them; at `kept`, every other one goes and from then on only
    every 2nd value is kept (at `kept` again: every 4th, and so on): always the values at the
    multiples of `stride`, an even sample of the whole conversation. `count`, `total` and
    `maximum` cover every value, and so do counts per whole millisecond, which keep the count
    above a whole-millisecond threshold (the frame period, 80 ms) exact at any length.
    """

    def __init__(self, values: Iterable[float] = (), kept: int = KEPT) -> None:
        assert kept >= 2 and kept & (kept - 1) == 0, "kept: a power of two"
        self.count = 0  # values seen
        self.total = 0.0
        self.maximum = -math.inf
        self.stride = 1  # every stride-th value is kept
        self._kept = array("d")
        self._limit = kept
        # [0]: values <= 0; [i]: in (i - 1, i] ms; [WHOLE_MS + 1]: above WHOLE_MS
        self._per_ms = array("I", bytes(4 * (WHOLE_MS + 2)))
        self.extend(values)

    def append(self, value: float) -> None:
        if self.count % self.stride == 0:
            self._kept.append(value)
            if len(self._kept) == self._limit:
                self._kept = self._kept[::2]
                self.stride *= 2
        self.count += 1
        self.total += value
        self.maximum = max(self.maximum, value)
        if value > WHOLE_MS:
            self._per_ms[WHOLE_MS + 1] += 1
        elif value > 0:
            self._per_ms[math.ceil(value)] += 1
        else:  # not above 0 (or not a number)
            self._per_ms[0] += 1

    def extend(self, values: Iterable[float]) -> None:
        for value in values:
            self.append(value)

    def __len__(self) -> int:
        return self.count

    def kept(self) -> np.ndarray:
        """The values held: all of them, or an even sample once there were more than `kept`."""
        return np.array(self._kept, dtype=float)  # a copy: appending goes on meanwhile

    def count_above(self, threshold: float) -> int:
        """How many values exceed `threshold`: exact up to `kept` values or for a whole number of
        milliseconds up to WHOLE_MS, estimated from the even sample otherwise."""
        if self.stride > 1 and float(threshold).is_integer() and 0 <= threshold <= WHOLE_MS:
            return sum(self._per_ms[int(threshold) + 1 :])
        above = int((self.kept() > threshold).sum())
        return above if self.stride == 1 else round(above * self.count / len(self._kept))

    def median(self) -> float | None:
        """The median of the values held (None for none)."""
        return float(np.median(self.kept())) if self.count else None

    def distribution(self) -> dict[str, float] | None:
        """`distribution` of all the values; beyond `kept`, mean and max still of all of them
        and the rest of the even sample."""
        figures = distribution(self.kept())
        if figures is not None and self.stride > 1:
            figures.update(mean=self.total / self.count, max=self.maximum)
        return figures


@dataclass
class Timings:
    """A conversation's per-frame figures as they come, and their summary."""

    compute_ms: Series = field(default_factory=Series)
    encode_ms: Series = field(default_factory=Series)
    lm_ms: Series = field(default_factory=Series)
    decode_ms: Series = field(default_factory=Series)
    latency_ms: Series = field(default_factory=Series)
    node_ms: Series = field(default_factory=Series)
    network_ms: Series = field(default_factory=Series)
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))

    @property
    def frames(self) -> int:
        return len(self.compute_ms)

    def add(
        self,
        compute_ms: float,
        encode_ms: float | None = None,
        lm_ms: float | None = None,
        decode_ms: float | None = None,
        latency_ms: float | None = None,
    ) -> None:
        """One frame's figures (None: not measured for this frame)."""
        self.compute_ms.append(compute_ms)
        for values, value in (
            (self.encode_ms, encode_ms),
            (self.lm_ms, lm_ms),
            (self.decode_ms, decode_ms),
            (self.latency_ms, latency_ms),
        ):
            if value is not None:
                values.append(value)

    def add_stats(self, stats: FrameStats) -> None:
        """A frame as the runtime reports it; its counters are running totals."""
        self.add(stats.compute_ms, stats.encode_ms, stats.lm_ms, stats.decode_ms, stats.latency_ms)
        for values, value in ((self.node_ms, stats.node_ms), (self.network_ms, stats.network_ms)):
            if value is not None:
                values.append(value)
        for name in COUNTERS:
            self.counters[name] = max(self.counters[name], int(getattr(stats, name)))

    @classmethod
    def of(cls, stats: Iterable[FrameStats]) -> Timings:
        timings = cls()
        for frame in stats:
            timings.add_stats(frame)
        return timings

    @classmethod
    def from_events(cls, frames: Iterable[dict[str, Any]]) -> Timings:
        """events.jsonl's frame events (dicts, as read back); a field that is not a number is
        left out, so a damaged line costs that figure only."""

        def number(event: dict[str, Any], name: str) -> float | None:
            value = event.get(name)
            return float(value) if isinstance(value, int | float) else None

        timings = cls()
        for event in frames:
            for name, values in (
                ("compute_ms", timings.compute_ms),
                ("encode_ms", timings.encode_ms),
                ("lm_ms", timings.lm_ms),
                ("decode_ms", timings.decode_ms),
                ("latency_ms", timings.latency_ms),
                ("node_ms", timings.node_ms),
                ("network_ms", timings.network_ms),
            ):
                if (value := number(event, name)) is not None:
                    values.append(value)
            for name in COUNTERS:
                if (value := number(event, name)) is not None:
                    timings.counters[name] = max(timings.counters[name], int(value))
        return timings

    def summary(
        self, frame_duration: float, wall_s: float | None = None, **extra: Any
    ) -> dict[str, Any]:
        """The figures above; {"frames": 0} for a conversation that stepped no frame."""
        if not self.compute_ms:
            return {"frames": 0}
        frame_ms = 1000 * frame_duration
        compute = self.compute_ms.distribution()
        assert compute is not None  # frames were stepped
        summary: dict[str, Any] = {
            "frames": self.frames,
            "frame_ms": frame_ms,
            "compute_ms": compute,
            "real_time_factor": compute["median"] / frame_ms,
            "frames_slower_than_real_time": self.compute_ms.count_above(frame_ms),
            "median_encode_ms": self.encode_ms.median(),
            "median_lm_ms": self.lm_ms.median(),
            "median_decode_ms": self.decode_ms.median(),
            **{name: int(self.counters.get(name, 0)) for name in COUNTERS},
            "latency_ms": self.latency_ms.distribution(),
        }
        if self.node_ms:
            summary["node_ms"] = self.node_ms.distribution()
        network = self.network_ms.distribution()
        if network is not None:
            latency = self.latency_ms.median()
            summary["network_ms"] = network
            summary["network_share"] = network["median"] / latency if latency else None
        if wall_s is not None:
            summary["wall_s"] = wall_s
            summary["wall_real_time_factor"] = wall_s / (self.frames * frame_duration)
        return summary | extra
