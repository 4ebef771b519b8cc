"""What following the echo's delay costs: CPU per 80 ms frame of the canceller with the delay
tracker (EchoConfig.follow_delay) and without it, interleaved frame by frame on the same audio,
so that a busy machine slows both alike; and the tracker's own `observe` on its own.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 .venv/bin/python scripts/echo_delay_cost.py \
        [--seconds 20] [--echo-only]

The far end is noise under a 4 Hz syllable envelope; the microphone is its echo (60 ms, a
decaying room) plus, unless --echo-only, a second such voice in double talk throughout (the
tracker's dearest case: it never settles, so every estimate is checked against its guard).
Prints medians, 95th percentiles and the ratio. (PYTHONPATH: this checkout's code, not the
editable install's.)
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from audio_io.echo import EchoCanceller, EchoConfig
from audio_io.echo_delay import DelayTracker

RATE, FRAME = 24000, 1920


def voice(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * RATE)) / RATE
    syllables = np.clip(np.sin(2 * np.pi * 4 * t + seed), 0, 1) * ((t % 2.0) < 1.6)
    return (0.3 * rng.standard_normal(len(t)) * syllables).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="audio per canceller")
    parser.add_argument("--echo-only", action="store_true", help="no double talk")
    args = parser.parse_args(argv)
    far = voice(args.seconds, 1)
    room = np.zeros(round(0.06 * RATE) + 3600)
    room[round(0.06 * RATE)] = 1.0
    room[round(0.06 * RATE) :] += (
        np.random.default_rng(2).standard_normal(3600) * np.exp(-np.arange(3600) / 720) * 0.3
    )
    room *= 0.3 / np.linalg.norm(room)
    user = 0.0 if args.echo_only else 0.5 * voice(args.seconds, 3)
    mic = (np.convolve(far, room)[: len(far)] + user).astype(np.float32)
    cancellers = {
        follow: EchoCanceller(EchoConfig(RATE, FRAME, lead=0.08, follow_delay=follow))
        for follow in (False, True)
    }
    tracker = DelayTracker(RATE)
    costs: dict[str, list[float]] = {"canceller alone": [], "with tracker": [], "tracker": []}
    for echo in cancellers.values():
        echo.played(far[: 2 * FRAME], 0.0)
    for i in range(0, len(far) - 2 * FRAME, FRAME):
        frame = mic[i : i + FRAME]
        for follow, echo in cancellers.items():
            echo.played(far[i + 2 * FRAME : i + 3 * FRAME], (i + 2 * FRAME) / RATE)
            start = time.process_time()
            echo.cancel(frame, i / RATE)
            costs["with tracker" if follow else "canceller alone"].append(
                time.process_time() - start
            )
        start = time.process_time()
        tracker.observe(far[i : i + FRAME], frame)
        costs["tracker"].append(time.process_time() - start)
    skip = round(1.2 * RATE / FRAME)  # the tracker estimates once its history is full
    median = {name: 1000 * float(np.median(c[skip:])) for name, c in costs.items()}
    p95 = {name: 1000 * float(np.percentile(c[skip:], 95)) for name, c in costs.items()}
    for name in costs:
        print(f"{name:16} median {median[name]:.2f} ms, 95th percentile {p95[name]:.2f} ms")
    ratio = median["with tracker"] / median["canceller alone"]
    print(f"with tracker / canceller alone: {ratio:.2f} ({len(costs['tracker']) - skip} frames)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
