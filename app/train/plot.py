"""`antiphon train plot`: a run's curves at a glance, from its log.jsonl.

    antiphon train plot runs/codec                        # runs/codec/curves.png
    antiphon train plot runs/lm trained/lm --out lm.png   # two runs side by side

The first panel is the training loss (each logged step, and its running mean over 10 rows); then
one panel per held-out figure the runs logged (`eval` rows: STOI, phoneme accuracy, answer
accuracy, ...), each run a line of its own colour, steps on the x axis. A run resumed from its
checkpoint logs the steps since that checkpoint again: the last row of a step counts. A run
from another's weights (`--init`) starts at its own step 0. matplotlib (the `eval` extra, which
`scripts/setup.sh --train` installs) is imported on first use, with the Agg backend: no display
needed.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from model.errors import ConfigError

from . import loop

INSTALL_HINT = "pip install matplotlib (or: bash scripts/setup.sh --train)"
SMOOTH = 10  # rows in the training loss's running mean
MAX_FIGURES = 12  # held-out panels at most (the first ones a log has, in its order)


def read_log(run: Path) -> tuple[list[dict], list[dict]]:
    """A run's training rows (with a loss) and held-out rows (with an `eval` dict)."""
    path = run / loop.LOG if run.is_dir() else run
    if not path.is_file():
        raise ConfigError(f"{run}: no training log to plot (no {path})")
    rows = loop.read_log(path)
    steps = [r for r in rows if _number(r.get("loss")) and isinstance(r.get("step"), int)]
    evals = [r for r in rows if isinstance(r.get("eval"), dict) and isinstance(r.get("step"), int)]
    return _last_per_step(steps), _last_per_step(evals)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _last_per_step(rows: list[dict]) -> list[dict]:
    """One row per step, the last logged (a resumed run logs again what followed its
    checkpoint), in step order."""
    return sorted({row["step"]: row for row in rows}.values(), key=lambda row: row["step"])


def held_out_names(evals: list[dict]) -> list[str]:
    """The scalar held-out figures, in the order the log first has them."""
    names: list[str] = []
    for row in evals:
        for name, value in row["eval"].items():
            if _number(value) and name not in names:
                names.append(name)
    return names


def plot_runs(runs: list[Path], out: Path) -> list[str]:
    """Draw the runs' curves into `out` (PNG); returns the held-out figures drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ConfigError(f"plotting needs matplotlib: {INSTALL_HINT}") from exc
    logs = {run: read_log(run) for run in runs}
    if not any(steps or evals for steps, evals in logs.values()):
        raise ConfigError(f"{', '.join(map(str, runs))}: the logs have no steps to plot yet")
    names: list[str] = []
    for _, evals in logs.values():
        names += [name for name in held_out_names(evals) if name not in names]
    names = names[:MAX_FIGURES]
    panels = 1 + len(names)
    columns = min(3, panels)
    rows = math.ceil(panels / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.2 * rows), squeeze=False)
    flat = list(axes.flat)
    for i, (run, (steps, evals)) in enumerate(logs.items()):
        colour = f"C{i % 10}"
        folder = run if run.is_dir() else run.parent
        label = "/".join(folder.resolve().parts[-2:])  # runs/codec and trained/codec differ
        flat[0].plot([], [], color=colour, label=label)  # the legend's entry, every run
        if steps:
            x = np.array([r["step"] for r in steps])
            loss = np.array([float(r["loss"]) for r in steps])
            alpha = 0.3 if len(loss) >= SMOOTH else 1.0
            flat[0].plot(x, loss, color=colour, alpha=alpha, linewidth=0.8, marker=".")
            if len(loss) >= SMOOTH:
                mean = np.convolve(loss, np.ones(SMOOTH) / SMOOTH, mode="valid")
                flat[0].plot(x[SMOOTH - 1 :], mean, color=colour)
        for axis, name in zip(flat[1:], names, strict=False):
            points = [(r["step"], r["eval"][name]) for r in evals if _number(r["eval"].get(name))]
            if points:
                xs, ys = zip(*points, strict=True)
                axis.plot(xs, ys, color=colour, marker="o", markersize=3)
    flat[0].set_title("training loss")
    for axis, name in zip(flat[1:], names, strict=False):
        axis.set_title(f"held-out {name}")
    for axis in flat[:panels]:
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    flat[0].legend(fontsize="small")  # which colour is which run, for every panel
    for axis in flat[panels:]:
        axis.set_visible(False)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=90)
    plt.close(figure)
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", type=Path, nargs="+", help="run folders (or their log.jsonl)")
    parser.add_argument("--out", type=Path, help="the PNG (default: the first run's curves.png)")


def run(args: argparse.Namespace) -> int:
    first = args.runs[0]
    out = args.out or (first if first.is_dir() else first.parent) / "curves.png"
    names = plot_runs(list(args.runs), out)
    print(f"wrote {out}: the training loss and {len(names)} held-out figures")
    return 0
