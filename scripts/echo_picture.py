"""Draw one run of the JACK echo loop: what the microphone picked up, what the model heard after
echo cancellation, and the echo removed (ERLE), with the user's speech and the echo path's jump.

    .venv/bin/python scripts/echo_picture.py [--out docs/echo-loop.png]   # nothing else running

It runs what `tests/app/talk/test_echo_jack.py` runs (a real jackd with the dummy driver, the
app's side as `antiphon talk` opens it, a scripted far end that talks for 11 s, a second JACK
client as the room: echo 40 ms and -10 dB, the user's two lines in double talk, the path jumping
to 110 ms and -6 dB at 8 s) and measures it as that test does (tests/app/talk/echo_loop.py).
Needs jackd, espeak-ng and matplotlib (`bash scripts/setup.sh --dev --eval`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.app.talk.echo_loop import (  # noqa: E402
    ERLE_TARGET_DB,
    FRAME,
    RATE,
    WINDOW,
    EchoFigures,
    FarEndScript,
    ScriptedFarEnd,
    far_end_speech,
    measure,
)
from tests.app.talk.test_echo_jack import converse  # noqa: E402
from tests.jack_server import jack_server  # noqa: E402


def level_db(power: np.ndarray) -> np.ndarray:
    return 10 * np.log10(np.maximum(power, 1e-10))


def draw(figures: EchoFigures, moves: list[tuple[int, float]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = figures.first_echo - round(0.5 * RATE / FRAME)  # half a second before the echo
    frames = np.arange(start, len(figures.raw_power))
    seconds = (frames - figures.first_echo) * FRAME / RATE  # 0: the first echo

    def at(frame: int) -> float:
        return (frame - figures.first_echo) * FRAME / RATE

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 5.6), sharex=True, height_ratios=[3, 2])
    user = figures.user_frames[start:]
    for ax in (top, bottom):
        ax.fill_between(
            seconds,
            0,
            1,
            where=user,
            transform=ax.get_xaxis_transform(),
            color="tab:green",
            alpha=0.15,
            step="mid",
            linewidth=0,
        )
        ax.axvline(at(figures.change), color="tab:red", linestyle="--", linewidth=1)
        for frame, _ in moves:
            ax.axvline(at(frame), color="tab:purple", linestyle=":", linewidth=1.2)
    levels = (
        (figures.raw_power, "0.55", "microphone: the user and the echo of the assistant"),
        (figures.clean_power, "tab:blue", "what the model hears (echo cancelled)"),
    )
    for power, color, label in levels:
        top.step(seconds, level_db(power[start:]), where="post", color=color, label=label)
    top.set_ylabel("level, dBFS per 80 ms")
    top.set_ylim(-95, -5)
    top.legend(loc="lower left", fontsize=8, framealpha=0.9)
    top.set_title(
        "Echo cancellation on a JACK echo loop (green: the user speaks; red: the room "
        "changes; purple: the canceller follows)",
        fontsize=9,
    )

    erle = figures.erle[start:]
    shown = np.where(np.isfinite(erle), erle, np.nan)
    bottom.plot(
        seconds + WINDOW * FRAME / RATE / 2,
        shown,
        color="tab:orange",
        label="ERLE over 0.48 s of echo-only frames",
    )
    bottom.axhline(ERLE_TARGET_DB, color="0.3", linewidth=0.8, linestyle="-.")
    bottom.text(seconds[0], ERLE_TARGET_DB + 1.5, f"{ERLE_TARGET_DB:.0f} dB target", fontsize=8)
    bottom.set_ylabel("echo removed, dB")
    bottom.set_xlabel("seconds after the assistant's first echo")
    bottom.set_ylim(0, max(60, np.nanmax(shown) + 5))
    bottom.legend(loc="lower left", fontsize=8, framealpha=0.9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/echo-loop.png"))
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)  # before the loop's 20 s, not after
    with tempfile.TemporaryDirectory() as tmp, jack_server() as server:
        script = FarEndScript(far_end_speech(Path(tmp)))
        room, echo = asyncio.run(converse(server, ScriptedFarEnd(script), Path(tmp)))
        figures = measure(Path(tmp) / "session", room)
    print(figures.report().splitlines()[0])
    print(f"delay moves (frame, s) {echo.delay_moves}")
    draw(figures, echo.delay_moves, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
