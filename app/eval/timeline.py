"""A session at a glance: a PNG timeline of both channels, their speech, and the inner monologue.

    draw_timeline("timeline.png", assistant, user, 24000, assistant_segments, user_segments,
                  pieces, title="session 3")

Top to bottom: the inner-monologue words placed at their times, the assistant's waveform and the
user's, each with its speech activity as a coloured band behind it. matplotlib (the `eval`
extra) is imported on first use, with the Agg backend: no display needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from model.errors import AntiphonError

from .turns import Piece, Segment

INSTALL_HINT = "pip install matplotlib (or: bash scripts/setup.sh --eval)"

ASSISTANT_COLOUR = "#1f77b4"
USER_COLOUR = "#d62728"
MARK_COLOUR = "#2ca02c"
MAX_WIDTH_IN = 40.0  # long sessions get a wide picture, up to this
SECONDS_PER_INCH = 1.5
DPI = 100
WORD_ROWS = 4  # words are staggered over this many rows so neighbours do not overlap
WORD_GAP_PX = 4  # the least room between two words on one row


class TimelineUnavailableError(AntiphonError):
    """matplotlib is not installed (it is optional: the `eval` extra)."""


def words_at_times(pieces: Sequence[Piece]) -> list[tuple[float, str]]:
    """Join tokenizer pieces into words: a piece starting with a space begins a new word."""
    words: list[tuple[float, str]] = []
    for piece in pieces:
        if not piece.text.strip():
            continue
        if words and not piece.text[:1].isspace() and not piece.text.startswith("<"):
            time, text = words[-1]
            words[-1] = (time, text + piece.text)
        else:
            words.append((piece.time, piece.text.strip()))
    return words


def draw_timeline(
    path: str | Path,
    assistant: np.ndarray,
    user: np.ndarray,
    sample_rate: int,
    assistant_segments: Sequence[Segment],
    user_segments: Sequence[Segment],
    pieces: Sequence[Piece] | None,
    title: str = "",
    marks: Sequence[tuple[float, float, str]] = (),
) -> None:
    """Write the timeline as a PNG at `path`; `marks` are labelled spans (start, end, label),
    such as response latencies, drawn under the words."""
    plt = _pyplot()
    fig = timeline_figure(
        assistant, user, sample_rate, assistant_segments, user_segments, pieces, title, marks
    )
    try:
        fig.savefig(path, dpi=fig.dpi)
    finally:
        plt.close(fig)


def timeline_figure(
    assistant: np.ndarray,
    user: np.ndarray,
    sample_rate: int,
    assistant_segments: Sequence[Segment],
    user_segments: Sequence[Segment],
    pieces: Sequence[Piece] | None,
    title: str = "",
    marks: Sequence[tuple[float, float, str]] = (),
) -> Any:
    """The timeline as a matplotlib Figure (its first axes: the monologue); the caller closes
    it (pyplot.close)."""
    plt = _pyplot()

    duration = max(len(assistant), len(user)) / sample_rate
    width = min(MAX_WIDTH_IN, max(10.0, duration / SECONDS_PER_INCH))
    fig, (text_ax, assistant_ax, user_ax) = plt.subplots(
        3, 1, figsize=(width, 5.5), sharex=True, height_ratios=[1.3, 1, 1], dpi=DPI
    )
    try:
        for ax, audio, segments, colour, name in (
            (assistant_ax, assistant, assistant_segments, ASSISTANT_COLOUR, "assistant"),
            (user_ax, user, user_segments, USER_COLOUR, "user"),
        ):
            _waveform(ax, audio, sample_rate, width, colour)
            for start, end in segments:
                ax.axvspan(start, end, color=colour, alpha=0.15, linewidth=0)
            ax.set_ylabel(name)
            ax.set_yticks([])
        text_ax.set_ylim(0, WORD_ROWS + 0.5)
        text_ax.set_yticks([])
        text_ax.set_ylabel("monologue")
        if pieces is None:
            text_ax.text(
                0.5,
                0.5,
                "no inner-monologue text",
                transform=text_ax.transAxes,
                ha="center",
                va="center",
                color="grey",
            )
        else:
            for start, end in assistant_segments:
                text_ax.axvspan(start, end, color=ASSISTANT_COLOUR, alpha=0.08, linewidth=0)
        for start, end, label in marks:
            text_ax.annotate(
                "", xy=(end, 0.3), xytext=(start, 0.3),
                arrowprops={"arrowstyle": "|-|", "color": MARK_COLOUR, "linewidth": 1,
                            "mutation_scale": 3},
            )  # fmt: skip
            text_ax.text((start + end) / 2, 0.45, label, fontsize=7, color=MARK_COLOUR,
                         ha="center", va="bottom")  # fmt: skip
        for ax in (text_ax, assistant_ax, user_ax):
            ax.grid(axis="x", alpha=0.3)
        user_ax.set_xlim(0, max(duration, 1e-3))
        user_ax.set_xlabel("time (s)")
        if title:
            fig.suptitle(title, fontsize=10, x=0.01, ha="left")
        fig.tight_layout()
        if pieces is not None:  # last: placed in pixels, on the final layout
            _place_words(fig, text_ax, words_at_times(pieces))
    except BaseException:
        plt.close(fig)
        raise
    return fig


def _place_words(fig: Any, ax: Any, words: Sequence[tuple[float, str]]) -> None:
    """Each word at its time on the highest row where it stands clear of the word before it
    there, measured as drawn; a word with room on no row (or past the axes' end) is left out,
    and how many were is written in the corner. Readable at any length: a long session shows
    fewer of its words, never words over one another."""
    renderer = fig.canvas.get_renderer()
    right = ax.get_window_extent(renderer).x1
    ends = [-math.inf] * WORD_ROWS  # each row's last label's right edge, in pixels
    left_out = 0
    for time, word in words:
        x = float(ax.transData.transform((time, 0.0))[0])
        label = ax.text(time, WORD_ROWS, word, fontsize=8, ha="left", va="center", clip_on=True)
        end = x + label.get_window_extent(renderer).width
        row = next((r for r in range(WORD_ROWS) if ends[r] + WORD_GAP_PX <= x), None)
        if row is None or end > right:
            label.remove()
            left_out += 1
            continue
        ends[row] = end
        label.set_y(WORD_ROWS - row)
        ax.plot([time, time], [0, WORD_ROWS - row - 0.15], color="grey", linewidth=0.4)
    if left_out:
        note = f"{left_out} of {len(words)} words not shown, for room"
        box = {"color": "white", "alpha": 0.8, "pad": 1}
        ax.text(0.998, 0.02, note, transform=ax.transAxes, ha="right", va="bottom",
                fontsize=7, color="grey", bbox=box)  # fmt: skip


def _waveform(ax: Any, audio: np.ndarray, sample_rate: int, width_in: float, colour: str) -> None:
    """Min/max envelope over about two bins per pixel: fast for hours of audio."""
    bins = max(1, int(width_in * 200))
    per_bin = max(1, len(audio) // bins)
    usable = len(audio) // per_bin * per_bin
    if usable == 0:
        return
    blocks = audio[:usable].reshape(-1, per_bin)
    times = (np.arange(len(blocks)) + 0.5) * per_bin / sample_rate
    ax.fill_between(times, blocks.min(axis=1), blocks.max(axis=1), color=colour, linewidth=0.3)
    peak = max(float(np.abs(audio).max()), 1e-3)
    ax.set_ylim(-1.05 * peak, 1.05 * peak)


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise TimelineUnavailableError(
            f"the timeline picture needs matplotlib: {INSTALL_HINT}, or pass --no-timeline"
        ) from exc
    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def require() -> None:
    """Raise TimelineUnavailableError now, rather than after the first recording."""
    _pyplot()
