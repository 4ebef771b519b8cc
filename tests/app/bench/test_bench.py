"""`antiphon bench` at tiny configs: it runs, and reports both implementations side by side.

A smoke test, not a timed test: it checks the shape of what is reported, not the speed.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from app.bench import cli as bench
from model.codec import Codec
from model.config import demo_lm, demo_mimi, moshi_7b, tiny_lm, tiny_mimi
from model.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.mark.parity
def test_tiny_frame_is_timed_for_ours_and_the_reference(tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench.json"
    args = _args("--frames", "2", "--warmup", "2", "--batch", "1", "2", "--json", str(out))
    assert bench.run(args) == 0

    printed = capsys.readouterr().out
    assert "reference" in printed and "ref/ours" in printed
    assert printed.count("batch ") == 2
    results = json.loads(out.read_text())["results"]
    assert [row["batch"] for row in results] == [1, 2]
    for row in results:
        for side in ("ours", "reference"):
            for part in bench.PARTS:
                assert len(row[side][part]["samples_ms"]) == 2
                assert 0 < row[side][part]["median_ms"] <= row[side][part]["p99_ms"]
        assert all(ratio > 0 for ratio in row["ratio"].values())


def test_codec_only_without_the_reference(tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench.json"
    args = _args(
        "--lm", "none", "--frames", "2", "--warmup", "0", "--no-reference", "--json", str(out)
    )
    assert bench.run(args) == 0
    printed = capsys.readouterr().out
    assert "ref/ours" not in printed
    assert re.search(r"^encode +\d", printed, re.M) and not re.search(r"^lm +\d", printed, re.M)
    (row,) = json.loads(out.read_text())["results"]
    assert "reference" not in row and row["ours"]["frame"]["median_ms"] > 0


def test_8bit_formats_are_timed_and_recorded(tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench.json"
    args = _args(
        "--frames", "2", "--warmup", "2", "--no-reference", "--kv-cache", "int8",
        "--int8-weights", "--json", str(out),
    )  # fmt: skip
    assert bench.run(args) == 0
    data = json.loads(out.read_text())
    assert data["kv_cache"] == "int8" and data["int8_weights"] is True
    assert data["results"][0]["ours"]["lm"]["median_ms"] > 0


def test_compiled_steps_are_timed_and_recorded(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("ANTIPHON_COMPILE_BACKEND", "aot_eager")  # the graphs, without C++
    out = tmp_path / "bench.json"
    args = _args(
        "--frames", "2", "--warmup", "1", "--no-reference", "--compile", "--json", str(out)
    )
    assert bench.run(args) == 0
    assert "ours     compiled (--compile)" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["compiled"] is True
    assert all(data["results"][0]["ours"][part]["median_ms"] > 0 for part in bench.PARTS)


@pytest.mark.parametrize("weights", ["bfloat16", "float16"])
def test_codec_weights_are_timed_and_recorded(tmp_path: Path, capsys, weights: str) -> None:
    out = tmp_path / "bench.json"
    args = _args(
        "--lm", "none", "--frames", "2", "--warmup", "0", "--no-reference",
        "--codec-weights", weights, "--json", str(out),
    )  # fmt: skip
    assert bench.run(args) == 0
    assert f"ours with {weights} weights (--codec-weights {weights})" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["codec_weights"] == weights and data["codec_weights_option"] == weights
    # The same count as in fp32: weights stored in 16 bits are buffers, counted too.
    assert data["codec_parameters"] == sum(p.numel() for p in Codec(tiny_mimi()).parameters())
    with pytest.raises(ConfigError, match="already in bfloat16"):
        bench.run(_args("--dtype", "bfloat16", "--codec-weights", weights, "--no-reference"))


def test_7b_needs_the_mimi_codec() -> None:
    with pytest.raises(ConfigError, match="--codec mimi"):
        bench.configs("7b", "tiny")


def test_demo_lm_times_the_bundled_model_shapes() -> None:
    codec, lm = bench.configs("demo", "demo")
    assert codec == demo_mimi() and lm == demo_lm(text_card=1024)
    with pytest.raises(ConfigError, match="--codec demo"):
        bench.configs("demo", "mimi")


@pytest.mark.parity
def test_reference_configs_translate_back_to_ours() -> None:
    from moshi.models.loaders import _lm_kwargs

    from app.bench.reference import kyutai_lm_kwargs

    assert kyutai_lm_kwargs(moshi_7b()) == _lm_kwargs  # the released config itself
    kyutai_lm_kwargs(tiny_lm(dep_q=8, n_q=16, card=2048))  # checks the round trip inside
    kyutai_lm_kwargs(demo_lm(text_card=1024))  # shared depth weights: a schedule


def test_importing_the_bench_does_not_import_the_reference() -> None:
    code = "import sys, app.bench.cli; print('moshi' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
