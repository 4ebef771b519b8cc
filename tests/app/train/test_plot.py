"""`antiphon train plot`: a run's log.jsonl drawn as a PNG; a log it cannot read is named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.train import cli
from app.train.plot import plot_runs, read_log
from model.errors import ConfigError

pytest.importorskip("matplotlib", reason="plotting needs matplotlib (the eval extra)")

PNG = b"\x89PNG\r\n\x1a\n"


def write_log(folder: Path, rows: list[dict]) -> Path:
    folder.mkdir(parents=True)
    (folder / "log.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def codec_like(folder: Path, steps: int) -> Path:
    rows: list[dict] = [{"step": 0, "probe_s": 1.0}]  # rows of other kinds are left out
    for step in range(25, steps + 1, 25):
        rows.append({"step": step, "loss": 5.0 / step**0.3, "step_s": 1.6})
        if step % 100 == 0:
            held = {"stoi": 0.5 + step / 1e4, "phoneme_acc": 0.1, "codes_used": [256, 300]}
            rows.append({"step": step, "eval": held})
    return write_log(folder, rows)


def test_a_run_and_another_are_drawn_side_by_side(tmp_path: Path) -> None:
    one, two = codec_like(tmp_path / "a", 400), codec_like(tmp_path / "b", 200)
    out = tmp_path / "curves.png"
    assert plot_runs([one, two / "log.jsonl"], out) == ["stoi", "phoneme_acc"]  # lists skipped
    assert out.read_bytes().startswith(PNG) and out.stat().st_size > 10_000
    # the command: the first run's folder gets curves.png
    assert cli.main(["plot", str(one)]) == 0
    assert (one / "curves.png").read_bytes().startswith(PNG)


def test_a_log_it_cannot_read_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no training log"):
        plot_runs([tmp_path / "missing"], tmp_path / "x.png")
    broken = codec_like(tmp_path / "broken", 100)
    with (broken / "log.jsonl").open("a") as log:
        log.write('{"step": 125, "loss"\n')
    with pytest.raises(ConfigError, match=r"log.jsonl, line 7: not JSON"):
        plot_runs([broken], tmp_path / "x.png")
    empty = write_log(tmp_path / "empty", [{"step": 0, "probe_s": 1.0}])
    with pytest.raises(ConfigError, match="no steps to plot yet"):
        plot_runs([empty], tmp_path / "x.png")


def test_a_resumed_run_counts_each_step_once_and_odd_rows_are_left_out(tmp_path: Path) -> None:
    rows: list[dict] = [
        {"step": 25, "loss": 3.0},
        {"step": 50, "loss": 2.0},
        {"step": 50, "eval": {"stoi": 0.5, "ok": True}},
        {"step": 25, "loss": 2.5},  # resumed from the checkpoint at step 0: logged again
        {"step": 50, "loss": 1.5},
        {"step": 75, "loss": None},
        {"step": 75, "loss": float("nan")},
    ]
    run = write_log(tmp_path / "run", rows)
    steps, evals = read_log(run)
    assert [(r["step"], r["loss"]) for r in steps] == [(25, 2.5), (50, 1.5)]
    assert plot_runs([run], tmp_path / "c.png") == ["stoi"]  # a boolean is not a figure
    only_held_out = write_log(tmp_path / "eval-only", [rows[2]])
    assert plot_runs([only_held_out], tmp_path / "e.png") == ["stoi"]
