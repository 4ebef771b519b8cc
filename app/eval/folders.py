"""What `antiphon eval` reads: recording folders, Full-Duplex-Bench folders, trees of them.

    found, failed = find_conversations([Path("runs"), Path("fdb")])
    conversation = load(found[0])      # EvaluationError names the file that is wrong

A recording folder is app/core/recording.py's (session.wav stereo: left = assistant, right = user;
events.jsonl; meta.json). An FDB folder holds input.wav (the user) and output.wav (the
assistant), mono, one rate, time-aligned, and, from `antiphon run --fdb`, output.text.tsv (the
inner monologue). The FDB category comes from the folder names on the path (the benchmark's
dataset folders: candor_pause_handling, icc_backchannel, candor_turn_taking,
synthetic_user_interruption, ...); its annotations (turn_taking.json, interrupt.json) are read
when present.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile

from app.core.files import FDB_INPUT, FDB_OUTPUT, TEXT_SUFFIX, read_text
from app.core.recording import EVENTS_FILE, META_FILE, SESSION_WAV, parse_events
from model.errors import AntiphonError

from . import fdb
from .turns import Piece, Segment

RECORDING_FILES = (SESSION_WAV, EVENTS_FILE, META_FILE)
DEFAULT_SAMPLE_RATE = 24000
DEFAULT_FRAME_SIZE = 1920  # Mimi's frame; used where a folder does not say (FDB folders)
FDB_TEXT = Path(FDB_OUTPUT).with_suffix(TEXT_SUFFIX).name  # output.text.tsv


class EvaluationError(AntiphonError):
    """A folder cannot be evaluated: a missing or malformed file (the message names it)."""


@dataclass
class Found:
    path: Path  # the folder
    kind: str  # "recording" or "fdb"
    name: str  # relative name, for the table and for --out
    category: str | None  # an FDB category, from the folder names


@dataclass
class Conversation:
    """One folder, loaded: the two channels on one clock, and what the runtime reported."""

    assistant: np.ndarray  # float32 [N]
    user: np.ndarray  # float32 [N]
    sample_rate: int
    frame_duration: float
    pieces: list[Piece] | None  # the inner monologue; None when the folder has none
    frames: list[dict[str, Any]] = field(default_factory=list)  # events.jsonl's frame events
    errors: list[dict[str, Any]] = field(default_factory=list)  # its error events
    user_end: float | None = None  # FDB turn_taking.json: the user's end of turn
    interruption: Segment | None = None  # FDB interrupt.json: [start, end] of the interruption
    warnings: list[str] = field(default_factory=list)


# --- finding folders -------------------------------------------------------------------------


def find_conversations(paths: Sequence[Path]) -> tuple[list[Found], list[tuple[Path, str]]]:
    """Every recording or FDB folder named or under the given paths; and the paths that are not."""
    found: list[Found] = []
    failed: list[tuple[Path, str]] = []
    seen: set[Path] = set()
    for root in paths:
        if root.is_file() and root.name in (*RECORDING_FILES, FDB_INPUT, FDB_OUTPUT):
            root = root.parent
        if not root.is_dir():
            what = "does not exist" if not root.exists() else "is not a folder"
            failed.append((root, f"{what}; give a recording folder or a folder holding some"))
            continue
        kind = folder_kind(root)
        folders = [(root, kind)] if kind else _walk(root)
        if not folders:
            failed.append(
                (root, f"no recording ({SESSION_WAV}) and no {FDB_INPUT}/{FDB_OUTPUT} under it")
            )
        for folder, kind in folders:
            if folder.resolve() in seen:
                continue
            seen.add(folder.resolve())
            relative = folder.relative_to(root)
            name = str(Path(root.name or root.resolve().name) / relative)
            category = fdb_category([*root.parts, *relative.parts])
            found.append(Found(folder, kind, name, category))
    return found, failed


def folder_kind(folder: Path) -> str | None:
    if any((folder / name).is_file() for name in RECORDING_FILES):
        return "recording"
    if any((folder / name).is_file() for name in (FDB_INPUT, FDB_OUTPUT)):
        return "fdb"
    return None


def _walk(root: Path) -> list[tuple[Path, str]]:
    folders = sorted(
        {p.parent for n in (*RECORDING_FILES, FDB_INPUT, FDB_OUTPUT) for p in root.rglob(n)}
    )
    return [(f, kind) for f in folders if (kind := folder_kind(f)) is not None]


def fdb_category(parts: Sequence[str]) -> str | None:
    """The FDB v1 category named by the nearest folder name that names one."""
    for part in reversed(parts):
        name = part.lower().replace("-", "_").replace(" ", "_")
        if "interrupt" in name:
            return fdb.USER_INTERRUPTION
        if "turn_taking" in name:
            return fdb.SMOOTH_TURN_TAKING
        if "pause" in name:
            return fdb.PAUSE_HANDLING
        if "user_backchannel" in name:
            return None  # v1.5's: the user backchannels; no v1 category (generic metrics only)
        if "backchannel" in name:
            return fdb.BACKCHANNEL
    return None


# --- reading a folder ------------------------------------------------------------------------


def load(item: Found) -> Conversation:
    if item.kind == "recording":
        return load_recording(item.path)
    conversation = load_fdb(item.path)
    _read_annotations(item.path, item.category, conversation)
    return conversation


def load_recording(folder: Path) -> Conversation:
    """A recording folder, checked file by file so that the message names what is wrong."""
    missing = [name for name in RECORDING_FILES if not (folder / name).is_file()]
    if missing:
        raise EvaluationError(
            f"{folder}: missing {', '.join(missing)}; a recording folder holds "
            f"{', '.join(RECORDING_FILES)}"
        )
    warnings: list[str] = []
    meta = _read_meta(folder / META_FILE, warnings)
    meta_path = folder / META_FILE
    try:
        expected_rate = int(meta.get("sample_rate") or DEFAULT_SAMPLE_RATE)
        frame_size = int(meta.get("frame_size") or DEFAULT_FRAME_SIZE)
    except (TypeError, ValueError) as exc:
        raise EvaluationError(f"{meta_path}: sample_rate / frame_size are not numbers") from exc
    wav_path = folder / SESSION_WAV
    audio, sample_rate = _read_wav(wav_path)
    if audio.shape[1] != 2:
        raise EvaluationError(
            f"{wav_path} has {audio.shape[1]} channel(s); a recording's {SESSION_WAV} is stereo "
            "(left = assistant, right = user)"
        )
    if sample_rate != expected_rate:
        raise EvaluationError(
            f"{wav_path} is {sample_rate} Hz but {META_FILE} says {expected_rate} Hz; a "
            f"recording is written at the codec's rate ({DEFAULT_SAMPLE_RATE} Hz)"
        )
    frame_duration = frame_size / sample_rate
    silent = meta.get("silent_frames")
    if isinstance(silent, int) and silent > 0:
        warnings.append(
            f"{folder}: {silent} frame(s) ({silent * frame_duration:.1f} s) were never processed "
            "(dropped to keep up, or lost on the way) and are silence in both channels; the "
            "'silence' events in events.jsonl say where"
        )
    events = _read_events(folder / EVENTS_FILE, warnings)
    events = _within_the_audio(folder, meta, events, -(-len(audio) // frame_size), warnings)
    pieces, frames, errors = [], [], []
    for event in events:
        kind = event.get("type")
        if kind == "text" and isinstance(event.get("text"), str):
            # the frame index is the WAV's clock; "time" is the runtime's wall clock
            frame, time = event.get("frame"), event.get("time")
            if isinstance(frame, int):
                pieces.append(Piece(frame * frame_duration, event["text"]))
            elif isinstance(time, int | float):
                pieces.append(Piece(float(time), event["text"]))
        elif kind == "frame":
            frames.append(event)
        elif kind == "error":
            errors.append(event)
    return Conversation(
        assistant=np.ascontiguousarray(audio[:, 0]),
        user=np.ascontiguousarray(audio[:, 1]),
        sample_rate=sample_rate,
        frame_duration=frame_duration,
        pieces=pieces,
        frames=frames,
        errors=errors,
        warnings=warnings,
    )


def _read_meta(path: Path, warnings: list[str]) -> dict[str, Any]:
    """meta.json; unreadable, it costs its own figures only: the defaults stand in (warned)."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        problem = f"is not readable JSON ({exc})"
    else:
        if isinstance(meta, dict):
            if meta.get("stopped_early"):
                warnings.append(
                    f"{path.parent}: the recording stopped early: {meta['stopped_early']}"
                )
            if "started_at" in meta and "ended_at" not in meta:  # Recorder writes both
                warnings.append(
                    f"{path} has no end: the recording was not closed (its process was killed, "
                    "or is still recording); evaluated as far as it goes"
                )
            return meta
        problem = "is not a JSON object"
    warnings.append(
        f"{path} {problem}: evaluated as a recording at {DEFAULT_SAMPLE_RATE} Hz in frames of "
        f"{DEFAULT_FRAME_SIZE} samples, the format antiphon writes"
    )
    return {}


def _within_the_audio(
    folder: Path,
    meta: dict[str, Any],
    events: list[dict[str, Any]],
    frames: int,
    warnings: list[str],
) -> list[dict[str, Any]]:
    """The events of frames session.wav holds; a recording whose audio ends before its events
    or meta.json say (a copy in part, a full disk) is warned about, not drawn past its end."""
    # A state event may sit at the end of the last frame ("stopped", "closed": frame = count).
    ends = [e["frame"] + (e.get("type") != "state") for e in events if _frame_of(e) is not None]
    said = max(ends, default=0)
    if isinstance(meta.get("frames"), int):
        said = max(said, meta["frames"])
    if said <= frames:
        return events
    warnings.append(
        f"{folder / SESSION_WAV} holds {frames} frames but the recording describes {said}: its "
        "audio was cut short (copied in part, or a full disk?); evaluated as far as the audio "
        "goes, the later events left out"
    )
    return [e for e in events if (_frame_of(e) or 0) + (e.get("type") != "state") <= frames]


def _frame_of(event: dict[str, Any]) -> int | None:
    frame = event.get("frame")
    return frame if isinstance(frame, int) and frame >= 0 else None


def _read_events(path: Path, warnings: list[str]) -> list[dict[str, Any]]:
    """events.jsonl, one object per line; a line that is not a JSON object is skipped, noted."""
    try:
        lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise EvaluationError(f"cannot read {path} ({exc})") from exc
    events, bad = parse_events(lines)
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
        warnings.append(
            f"{path}: {len(bad)} line(s) are not JSON objects and were skipped (line {shown})"
        )
    return events


def load_fdb(folder: Path) -> Conversation:
    """input.wav (the user) and output.wav (the assistant): mono, one rate, time-aligned."""
    paths = [folder / FDB_INPUT, folder / FDB_OUTPUT]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise EvaluationError(
            f"{folder}: missing {', '.join(missing)}; a Full-Duplex-Bench folder holds "
            f"{FDB_INPUT} (the user) and {FDB_OUTPUT} (the assistant; `antiphon run --fdb` "
            "writes it)"
        )
    (user, user_rate), (assistant, assistant_rate) = (_read_wav(p) for p in paths)
    for path, audio in zip(paths, (user, assistant), strict=True):
        if audio.shape[1] != 1:
            raise EvaluationError(f"{path} has {audio.shape[1]} channels; FDB's WAVs are mono")
    if user_rate != assistant_rate:
        raise EvaluationError(
            f"{paths[1]} is {assistant_rate} Hz but {paths[0]} is {user_rate} Hz; "
            f"{FDB_OUTPUT} must be time-aligned with {FDB_INPUT} at the same rate"
        )
    warnings = []
    if len(user) != len(assistant):
        warnings.append(
            f"{paths[1]} has {len(assistant)} samples, {paths[0]} {len(user)}: the shorter is "
            "padded with silence"
        )
    length = max(len(user), len(assistant))
    pieces = None
    text_path = folder / FDB_TEXT
    if text_path.is_file():
        try:
            pieces = [Piece(start, text) for start, _, _, text in read_text(text_path)]
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            warnings.append(f"{text_path} is unreadable ({exc}): evaluated without text")
    return Conversation(
        assistant=np.pad(assistant[:, 0], (0, length - len(assistant))),
        user=np.pad(user[:, 0], (0, length - len(user))),
        sample_rate=user_rate,
        frame_duration=DEFAULT_FRAME_SIZE / DEFAULT_SAMPLE_RATE,
        pieces=pieces,
        warnings=warnings,
    )


def _read_annotations(folder: Path, category: str | None, conversation: Conversation) -> None:
    """FDB's turn_taking.json (user's end of turn) and interrupt.json / v1.5 metadata.json."""
    try:
        if category == fdb.SMOOTH_TURN_TAKING and (folder / "turn_taking.json").is_file():
            data = json.loads((folder / "turn_taking.json").read_text(encoding="utf-8"))
            conversation.user_end = float(data[0]["timestamp"][0])
        elif category == fdb.USER_INTERRUPTION:
            for name in ("interrupt.json", "metadata.json"):
                if (folder / name).is_file():
                    data = json.loads((folder / name).read_text(encoding="utf-8"))
                    start, end = (
                        data[0]["timestamp"] if isinstance(data, list) else data["timestamps"]
                    )
                    conversation.interruption = (float(start), float(end))
                    break
    except (OSError, UnicodeDecodeError, ValueError, KeyError, IndexError, TypeError) as exc:
        conversation.warnings.append(
            f"{folder}: unreadable FDB annotation ({exc!r}); using voice activity instead"
        )


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    try:
        with path.open("rb") as file:
            head = file.read(12)
    except OSError as exc:
        raise EvaluationError(f"cannot read {path} ({exc})") from exc
    # Checked here: libsndfile would try other formats (MPEG, say) and blame something else.
    if not head:
        raise EvaluationError(f"{path} is empty (0 bytes): no audio was ever written to it")
    if head[:4] not in (b"RIFF", b"RIFX", b"RF64") or head[8:12] != b"WAVE":
        raise EvaluationError(
            f"{path} is not a WAV file (it begins {head!r}): it is damaged, or another file "
            "under its name; the recording's audio cannot be evaluated"
        )
    try:
        audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, OSError, RuntimeError) as exc:
        raise EvaluationError(f"cannot read {path} as audio ({exc}): it is damaged") from exc
    if len(audio) == 0:
        raise EvaluationError(
            f"{path} holds no audio (0 samples): the session ended before its first frame"
        )
    return audio, int(rate)
