"""`antiphon run`: stream audio files through the model, frame by frame, as fast as it goes.

    antiphon run IN OUT.wav      OUT.wav: the assistant, mono 24 kHz PCM 16, exactly as long as
                                 IN (at 24 kHz) and time-aligned with it: samples [t*1920,
                                 (t+1)*1920) are what the model said at the step that was fed
                                 input frame t (the input is zero-padded to whole frames, the
                                 output cut back to the input's length).
                                 OUT.text.tsv: the inner monologue (format below).
    antiphon run --fdb DIR       Full-Duplex-Bench: every folder under DIR holding input.wav gets
                                 output.wav (at input.wav's sample rate and exactly its length,
                                 time-aligned) and output.text.tsv; a fresh conversation each.
    --record DIR                 also record the session(s) (app/core/recording.py's folder format;
                                 with --fdb, one recording per folder under DIR).

The text file's format is `app.core.files.TEXT_FORMAT` (shown by --help too).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
from tqdm import tqdm

from app.core.engine import COMPILE_NOTICE, Engine
from app.core.events import (
    EventFanout,
    EventLog,
    EventSink,
    FrameStats,
    HeardEvent,
    StateEvent,
    TextEvent,
    monologue_event,
)
from app.core.files import (
    FDB_INPUT,
    FDB_OUTPUT,
    TEXT_FORMAT,
    TEXT_SUFFIX,
    heard_path,
    text_path,
    write_atomically,
    write_text,
)
from app.core.models import add_model_arguments, load_from_args
from app.core.recording import Recorder
from app.core.timing import Timings
from audio_io.errors import AudioError
from audio_io.files import read_audio, write_wav
from audio_io.reframe import resample
from model.errors import AntiphonError, ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = TEXT_FORMAT
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add_model_arguments(parser)
    parser.add_argument("input", type=Path, nargs="?", help="audio file: what the user says")
    parser.add_argument(
        "output",
        type=Path,
        nargs="?",
        help=f"WAV written: the assistant, mono 24 kHz, as long as the input; the inner "
        f"monologue goes next to it as OUTPUT{TEXT_SUFFIX} (start_s, frame, token, text)",
    )
    parser.add_argument(
        "--fdb",
        type=Path,
        metavar="DIR",
        help=f"Full-Duplex-Bench tree: every folder with {FDB_INPUT} gets {FDB_OUTPUT} "
        f"(same sample rate and length) and output{TEXT_SUFFIX}",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help=f"with --fdb, redo folders that already have {FDB_OUTPUT}; "
        "with --record, replace existing recordings",
    )
    parser.add_argument("--record", type=Path, metavar="DIR", help="also record the session(s)")


@dataclass
class Conversation:
    reply: np.ndarray  # [samples] float32 at the engine's rate, as long as the input
    pieces: list[TextEvent]  # what the model says
    heard: list[HeardEvent]  # what it wrote down of the user's words (a model that does)
    stats: list[FrameStats]
    wall_s: float


def converse(
    engine: Engine,
    user: np.ndarray,
    sink: EventSink | None = None,
    recorder: Recorder | None = None,
    progress: bool = True,
) -> Conversation:
    """One conversation: `user` (float32 at the engine's rate) in, the assistant's reply out."""
    F = engine.frame_size
    frames = np.pad(user, (0, -len(user) % F)).reshape(-1, F)  # [T, F]
    reply = np.zeros(frames.size, dtype=np.float32)
    events = EventLog()
    out = EventFanout(events, *([sink] if sink else []), *([recorder] if recorder else []))
    out.emit(StateEvent(0.0, 0, "started"))
    start = time.perf_counter()
    for t, frame in enumerate(tqdm(frames, unit="frame", disable=not progress, leave=False)):
        result = engine.step(frame)
        reply[t * F : (t + 1) * F] = result.pcm
        if recorder is not None:
            recorder.write_frame(result.pcm, frame)
        now = t * engine.frame_duration
        text = result.text
        if text:
            out.emit(monologue_event(now, t, result.text_token, text, result.heard))
        out.emit(
            FrameStats(
                now,
                t,
                encode_ms=result.encode_ms,
                lm_ms=result.lm_ms,
                decode_ms=result.decode_ms,
                compute_ms=result.compute_ms,
                real_time_factor=result.compute_ms / (1000 * engine.frame_duration),
            )
        )
    wall_s = time.perf_counter() - start
    out.emit(StateEvent(len(frames) * engine.frame_duration, len(frames), "stopped"))
    pieces, stats = events.of(TextEvent), events.of(FrameStats)
    return Conversation(reply[: len(user)], pieces, events.of(HeardEvent), stats, wall_s)


def run(args: argparse.Namespace) -> int:
    if (args.fdb is None) == (args.input is None or args.output is None):
        raise ConfigError("give either IN and OUT.wav, or --fdb DIR (not both)")
    if args.fdb is not None and not args.fdb.is_dir():
        raise ConfigError(f"--fdb {args.fdb}: not a folder")
    model = load_from_args(args)
    if model.notice:
        print(f"antiphon: {model.notice}", file=sys.stderr)
    engine = Engine(model)
    if model.compiled:  # compiled before the first frame, so its minutes are not in the timings
        print(f"antiphon: {COMPILE_NOTICE}", file=sys.stderr, flush=True)
        engine.warm_up()
    if args.fdb is not None:
        return _run_fdb(engine, args)
    user = read_audio(args.input, sample_rate=engine.sample_rate)
    result = _one(engine, args.input, user, args.output, args.record, args)
    also = f" and {heard_path(args.output)}" if result.heard else ""
    print(f"wrote {args.output} and {text_path(args.output)}{also}")
    print(_summary_line(engine, result.stats, result.wall_s))
    return 0


def _run_fdb(engine: Engine, args: argparse.Namespace) -> int:
    root: Path = args.fdb
    folders = sorted(path.parent for path in root.rglob(FDB_INPUT) if path.is_file())
    if not folders:
        print(f"antiphon: no {FDB_INPUT} under {root}", file=sys.stderr)
        return 1
    todo = [f for f in folders if args.overwrite or not (f / FDB_OUTPUT).exists()]
    failed: list[tuple[Path, Exception]] = []
    stats: list[FrameStats] = []
    wall_s = 0.0
    for folder in tqdm(todo, unit="folder", desc="Full-Duplex-Bench"):
        input_path = folder / FDB_INPUT
        record = args.record / folder.relative_to(root) if args.record else None
        engine.reset()  # a fresh conversation per folder
        try:
            user = read_audio(input_path, sample_rate=engine.sample_rate)
            info = soundfile.info(input_path)  # output.wav: the input's own rate and length
            output = folder / FDB_OUTPUT
            result = _one(
                engine, input_path, user, output, record, args, (info.samplerate, info.frames)
            )
        except (AudioError, AntiphonError) as exc:  # one bad folder: report it, do the others
            tqdm.write(f"antiphon: {exc}", file=sys.stderr)
            failed.append((folder, exc))
            continue
        stats += result.stats
        wall_s += result.wall_s
    print(
        f"Full-Duplex-Bench: {len(todo) - len(failed)} written, {len(folders) - len(todo)} "
        f"skipped (already had {FDB_OUTPUT}), {len(failed)} failed"
    )
    if stats:
        print(_summary_line(engine, stats, wall_s))
    for folder, error in failed:
        print(f"failed: {folder}: {error}", file=sys.stderr)
    return 1 if failed else 0


def _one(
    engine: Engine,
    input_path: Path,
    user: np.ndarray,
    output: Path,
    record: Path | None,
    args: argparse.Namespace,
    out_format: tuple[int, int] | None = None,
) -> Conversation:
    """Stream one file; write its output WAV and its text.

    The WAV is at the engine's rate and as long as `user`, or, with `out_format` = (sample rate,
    samples), resampled to that rate and cut or zero-padded to exactly that many samples.
    """
    recorder = None
    if record is not None:
        devices = {"inference": str(engine.model.device), "input": str(input_path)}
        recorder = Recorder(
            record, engine.format, engine.model, engine.sampling, devices, overwrite=args.overwrite
        )
    with recorder or contextlib.nullcontext():  # closed without summary if interrupted
        result = converse(engine, user, recorder=recorder, progress=args.fdb is None)
        if recorder is not None:
            summary = Timings.of(result.stats).summary(engine.frame_duration, result.wall_s)
            recorder.close(summary)
    rate, reply = engine.sample_rate, result.reply
    if out_format is not None:  # a round trip through 24 kHz may be a sample or two off
        rate, length = out_format
        reply = resample(reply, engine.sample_rate, rate)
        reply = np.pad(reply[:length], (0, max(0, length - len(reply))))
    output.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(output, lambda tmp: write_wav(tmp, reply, rate))
    write_text(text_path(output), result.pieces)
    if result.heard:
        write_text(heard_path(output), result.heard)
    else:  # not one left from an earlier run with another model
        heard_path(output).unlink(missing_ok=True)
    return result


def _summary_line(engine: Engine, stats: list[FrameStats], wall_s: float) -> str:
    s = Timings.of(stats).summary(engine.frame_duration, wall_s)
    compute = s["compute_ms"]
    return (
        f"{s['frames']} frames ({s['frames'] * engine.frame_duration:.1f} s of audio) in "
        f"{wall_s:.1f} s; compute per {s['frame_ms']:.0f} ms frame: median "
        f"{compute['median']:.1f} ms, p99 {compute['p99']:.1f} ms; real-time factor "
        f"{s['real_time_factor']:.2f} (below 1: faster than real time)"
    )
