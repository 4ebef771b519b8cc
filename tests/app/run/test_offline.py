"""`antiphon run` on real files with the random tiny model: lengths, alignment, text, FDB trees."""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from app.core import files
from app.core.engine import Engine, StepResult
from app.core.models import random_model
from app.core.recording import SESSION_WAV, read_recording
from app.run import offline
from audio_io.files import read_audio
from model import SamplingParams
from model.errors import ConfigError

F = 1920


@pytest.fixture(autouse=True)
def hash_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTIPHON_CACHE", str(tmp_path / "cache"))


def _args(*argv: str | Path) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    offline.add_arguments(parser)
    return parser.parse_args([str(a) for a in (*argv, "--device", "cpu")])


def _tone(path: Path, seconds: float, sample_rate: int, channels: int = 1) -> None:
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    audio = 0.3 * np.sin(2 * math.pi * 220 * t[:, None] * np.arange(1, channels + 1))
    soundfile.write(path, audio, sample_rate)


def test_file_in_wav_and_text_out(tmp_path: Path, capsys) -> None:
    source, out = tmp_path / "question.wav", tmp_path / "reply.wav"
    _tone(source, 3.0 + 7 / 48000, 48000, channels=2)  # 48 kHz stereo, not whole frames
    assert offline.run(_args(source, out, "--record", tmp_path / "rec")) == 0

    expected = len(read_audio(source, sample_rate=24000))
    reply, rate = soundfile.read(out)
    assert rate == 24000 and reply.ndim == 1 and len(reply) == expected
    assert soundfile.info(out).subtype == "PCM_16"
    assert np.abs(reply).max() > 0  # the model said something

    header = (tmp_path / "reply.text.tsv").read_text().splitlines()[0]
    assert header.split("\t") == list(files.TEXT_HEADER)
    rows = files.read_text(tmp_path / "reply.text.tsv")
    assert rows, "the random model emits non-PAD tokens, shown as <id>"
    for start_s, frame, token, text in rows:
        assert start_s == pytest.approx(frame * 0.08) and text == f"<{token}>"
    assert [r[1] for r in rows] == sorted({r[1] for r in rows})  # at most one piece per frame

    recording = read_recording(tmp_path / "rec")
    frames = math.ceil(expected / F)
    assert len(recording.user) == frames * F  # the recording keeps whole frames
    assert recording.meta["summary"]["frames"] == frames
    kinds = [e["type"] for e in recording.events]
    assert kinds.count("frame") == frames and kinds.count("text") == len(rows)
    np.testing.assert_allclose(recording.assistant[:expected], reply, atol=2 / 32768)

    printed = capsys.readouterr().out
    assert f"{frames} frames" in printed and "real-time factor" in printed


class HearingEngine:
    """A model whose monologue writes down the user's words: frames 1 and 2 carry what it heard,
    frame 4 what it says."""

    frame_size, sample_rate, frame_duration = F, 24000, F / 24000

    def __init__(self) -> None:
        self.frame = 0

    def step(self, pcm: np.ndarray) -> StepResult:
        t, self.frame = self.frame, self.frame + 1
        heard = {1: " add two", 2: "\tand three"}.get(t, "")
        said = " Five." if t == 4 else ""
        token = 40 + t if heard or said else -1
        return StepResult(0 * pcm, token, heard or said, 0.0, 0.0, 0.0, heard=bool(heard))


def test_what_the_model_heard_goes_to_a_file_of_its_own(tmp_path: Path) -> None:
    """The text file holds only what the model says (what `eval` and every reader of it want);
    what it wrote down of the user goes to OUT.heard.tsv, which a model that hears nothing
    does not get (an earlier run's is removed)."""
    output = tmp_path / "reply.wav"
    args = argparse.Namespace(fdb=None, overwrite=False)
    user = np.zeros(6 * F, dtype=np.float32)
    offline._one(HearingEngine(), tmp_path / "q.wav", user, output, None, args)  # type: ignore[arg-type]
    assert files.read_text(files.text_path(output)) == [(0.32, 4, 44, " Five.")]
    heard = files.read_text(files.heard_path(output))
    assert heard == [(0.08, 1, 41, " add two"), (0.16, 2, 42, "\tand three")]

    offline._one(EchoEngine(), tmp_path / "q.wav", user, output, None, args)  # type: ignore[arg-type]
    assert not files.heard_path(output).exists() and not files.read_text(files.text_path(output))


class EchoEngine:
    """Says back twice what it is fed, in the same step: any shift in the output would show."""

    frame_size, sample_rate, frame_duration = F, 24000, F / 24000

    def __init__(self) -> None:
        self.model = random_model(torch.device("cpu"), SamplingParams())
        self.model.tokenizer = None

    def step(self, pcm: np.ndarray) -> StepResult:
        return StepResult(2 * pcm, -1, "", 0.0, 0.0, 0.0)


def test_output_frame_t_is_the_step_fed_input_frame_t() -> None:
    user = np.random.default_rng(0).uniform(-0.4, 0.4, 5 * F + 100).astype(np.float32)
    result = offline.converse(EchoEngine(), user, progress=False)  # type: ignore[arg-type]
    assert len(result.reply) == len(user)
    np.testing.assert_array_equal(result.reply, 2 * user)
    assert [s.frame for s in result.stats] == list(range(6))


def test_fdb_tree_with_one_corrupt_input(tmp_path: Path, capsys) -> None:
    root = tmp_path / "fdb"
    lengths = {"candor/1": 1.0, "candor/2": 1.3 + 5 / 16000}
    for name, seconds in lengths.items():
        (root / name).mkdir(parents=True)
        _tone(root / name / "input.wav", seconds, 16000)
    (root / "candor/3").mkdir()
    (root / "candor/3/input.wav").write_bytes(b"RIFF, but not really a WAV file")

    assert offline.run(_args("--fdb", root, "--record", tmp_path / "rec")) == 1

    for name in lengths:
        source, output = soundfile.info(root / name / "input.wav"), root / name / "output.wav"
        info = soundfile.info(output)
        assert (info.samplerate, info.frames, info.channels) == (16000, source.frames, 1)
        assert (root / name / "output.text.tsv").is_file()
        assert (tmp_path / "rec" / name / SESSION_WAV).is_file()
    assert not (root / "candor/3/output.wav").exists()
    captured = capsys.readouterr()
    assert str(root / "candor/3/input.wav") in captured.err  # the bad file, by name
    assert "2 written, 0 skipped" in captured.out and "1 failed" in captured.out

    before = (root / "candor/1/output.wav").stat().st_mtime_ns
    assert offline.run(_args("--fdb", root)) == 1  # the corrupt one still fails
    assert "0 written, 2 skipped" in capsys.readouterr().out
    assert (root / "candor/1/output.wav").stat().st_mtime_ns == before


def test_each_fdb_folder_is_a_fresh_conversation(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        _tone(tmp_path / name / "input.wav", 1.0, 24000)  # the same input twice
    assert offline.run(_args("--fdb", tmp_path)) == 0
    a, _ = soundfile.read(tmp_path / "a/output.wav")
    b, _ = soundfile.read(tmp_path / "b/output.wav")
    np.testing.assert_array_equal(a, b)  # the second did not continue the first
    assert len(a) == 24000


@pytest.mark.parametrize(
    "argv",
    [(), ("in.wav",), ("in.wav", "out.wav", "--fdb", ".")],
    ids=["nothing", "no-output", "both"],
)
def test_either_files_or_fdb(argv: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError, match="--fdb"):
        offline.run(_args(*argv))


def test_help_documents_the_text_format() -> None:
    parser = argparse.ArgumentParser()
    offline.add_arguments(parser)
    assert "start_s" in parser.format_help() and ".text.tsv" in parser.format_help()


def test_every_frame_of_the_real_engine_is_timed() -> None:
    engine = Engine(random_model(torch.device("cpu"), SamplingParams()))
    result = offline.converse(engine, np.zeros(3 * F, np.float32), progress=False)
    assert len(result.stats) == 3 and all(s.compute_ms > 0 for s in result.stats)


# --- a model from the hub that cannot be had (issue 13, item 8) -----------------------------


def _run_with_hf_repo(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    """The real command line in a fresh process: huggingface_hub reads its environment
    (HF_ENDPOINT among others) once, at import."""
    _tone(tmp_path / "in.wav", 1.0, 24000)
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    environment.update(HF_HUB_CACHE=str(cache), OMP_NUM_THREADS="1", **env)
    argv = [sys.executable, "-m", "app.cli", "run", str(tmp_path / "in.wav")]
    argv += [str(tmp_path / "out.wav"), "--hf-repo", "org/not-cached", "--device", "cpu"]
    started = time.monotonic()
    root = Path(__file__).resolve().parents[3]
    done = subprocess.run(
        argv, capture_output=True, text=True, env=environment, timeout=300, cwd=root
    )
    return done, time.monotonic() - started


def test_a_repo_not_in_the_cache_offline_is_one_line_without_a_7b_guess(tmp_path: Path) -> None:
    done, _ = _run_with_hf_repo(tmp_path, HF_HUB_OFFLINE="1")
    assert done.returncode != 0 and not (tmp_path / "out.wav").exists()
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr  # no "has no config.json: assuming the Moshi 7B" first
    (line,) = lines
    assert line.startswith("antiphon: ") and "org/not-cached" in line
    assert "not in the Hugging Face cache" in line and "HF_HUB_OFFLINE" in line


def test_an_unreachable_hub_fails_in_seconds_with_one_line(tmp_path: Path) -> None:
    done, took = _run_with_hf_repo(tmp_path, HF_ENDPOINT="http://127.0.0.1:9")
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr  # no retry warnings
    (line,) = lines
    assert "cannot reach the Hugging Face hub" in line and "127.0.0.1:9" in line
    assert "org/not-cached" in line and "HF_HUB_OFFLINE" in line
    assert took < 15, f"took {took:.0f} s"


def test_a_text_file_with_a_short_row_is_refused_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "reply.text.tsv"
    path.write_text("start_s\tframe\ttoken\ttext\n0.080\t1\t41\t Five\n0.160\t2\n")
    with pytest.raises(ValueError, match=r"reply.text.tsv, line 3: 2 columns, not the 4 of"):
        files.read_text(path)
