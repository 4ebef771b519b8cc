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
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .events import FrameStats

COUNTERS = ("dropped_input", "underruns", "overruns", "xruns")


def distribution(values: Sequence[float]) -> dict[str, float] | None:
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


def _median(values: Sequence[float]) -> float | None:
    return float(np.median(values)) if len(values) else None


@dataclass
class Timings:
    """A conversation's per-frame figures as they come, and their summary."""

    compute_ms: list[float] = field(default_factory=list)
    encode_ms: list[float] = field(default_factory=list)
    lm_ms: list[float] = field(default_factory=list)
    decode_ms: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    node_ms: list[float] = field(default_factory=list)
    network_ms: list[float] = field(default_factory=list)
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
        compute = np.asarray(self.compute_ms, dtype=float)
        frame_ms = 1000 * frame_duration
        summary: dict[str, Any] = {
            "frames": self.frames,
            "frame_ms": frame_ms,
            "compute_ms": distribution(self.compute_ms),
            "real_time_factor": float(np.median(compute)) / frame_ms,
            "frames_slower_than_real_time": int((compute > frame_ms).sum()),
            "median_encode_ms": _median(self.encode_ms),
            "median_lm_ms": _median(self.lm_ms),
            "median_decode_ms": _median(self.decode_ms),
            **{name: int(self.counters.get(name, 0)) for name in COUNTERS},
            "latency_ms": distribution(self.latency_ms),
        }
        if self.node_ms:
            summary["node_ms"] = distribution(self.node_ms)
        if self.network_ms:
            network = float(np.median(self.network_ms))
            latency = _median(self.latency_ms)
            summary["network_ms"] = distribution(self.network_ms)
            summary["network_share"] = network / latency if latency else None
        if wall_s is not None:
            summary["wall_s"] = wall_s
            summary["wall_real_time_factor"] = wall_s / (self.frames * frame_duration)
        return summary | extra
