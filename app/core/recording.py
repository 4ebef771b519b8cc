"""Recording one conversation into a folder that survives the process being killed.

    folder/session.wav    stereo, 24 kHz, PCM 16: left = assistant, right = user, one frame clock
    folder/microphone.wav with keep_microphone=True: mono, 24 kHz, PCM 16, the microphone before
                          echo cancellation, frame for frame on session.wav's clock
    folder/events.jsonl   one Event.to_json() per line, flushed per line
    folder/meta.json      model (files + sha256), sampling, seed, devices, versions, start time;
                          rewritten atomically at close with the timing summary (app.core.timing)
                          and the sampling as it ended (sampling_at_end, sampling_changes)

with Recorder(folder, engine.format, model, sampling, devices={"inference": "cuda:0"}) as recorder:
    recorder.write_frame(reply_pcm, mic_pcm)   # once per 80 ms frame, float32 [1920] each
    recorder.emit(TextEvent(...))              # an EventSink
    recorder.close(timings.summary(frame_duration))   # app.core.timing

`model` is the LoadedModel (described by its files, hashed) or, for a conversation whose model
runs elsewhere (`antiphon talk --remote`), the name the node gives it.

Crash safety: libsndfile writes samples straight to the file descriptor (no user-space buffer),
and the WAV header's sizes are rewritten after every write (SFC_SET_UPDATE_HEADER_AUTO), so after
SIGKILL every reader, not only libsndfile, sees all the frames written. Nothing is fsynced per
frame (a slow disk must not stall the inference thread): a power cut can lose the last seconds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import soundfile
import torch
from tqdm import tqdm

from audio_io.files import write_wav
from audio_io.reframe import resample
from model import SamplingParams
from model.errors import AntiphonError

from .audio import AudioFormat
from .events import Event, StateEvent
from .files import FDB_INPUT, FDB_OUTPUT, write_json_atomically
from .models import LoadedModel

log = logging.getLogger(__name__)

SESSION_WAV = "session.wav"
MICROPHONE_WAV = "microphone.wav"  # the raw microphone, when kept (the user channel is cleaned)
EVENTS_FILE = "events.jsonl"
META_FILE = "meta.json"
FORMAT_VERSION = 1
# Full-Duplex-Bench's evaluation hands output.wav to Silero VAD without a sample rate, which then
# assumes 16 kHz (and its inputs are 16 kHz), so exports default to 16 kHz.
FDB_SAMPLE_RATE = 16000

_HASH_PROGRESS_BYTES = 100 * 2**20  # show a progress bar when hashing files larger than this
_HASH_CHUNK = 8 * 2**20
_SFC_SET_UPDATE_HEADER_AUTO = 0x1061  # sndfile.h; soundfile does not wrap this command


class RecordingError(AntiphonError):
    """A recording folder cannot be written or read."""


class Recording(NamedTuple):
    assistant: np.ndarray  # [samples] float32, left channel
    user: np.ndarray  # [samples] float32, right channel
    sample_rate: int
    events: list[dict[str, Any]]  # events.jsonl, parsed
    meta: dict[str, Any]


class Recorder:
    """An EventSink that also takes the two audio channels, one frame at a time."""

    def __init__(
        self,
        folder: str | Path,
        format: AudioFormat,
        model: LoadedModel | str,
        sampling: SamplingParams,
        devices: dict[str, Any],
        *,
        overwrite: bool = False,
        keep_microphone: bool = False,
    ) -> None:
        self.folder = Path(folder)
        self.sample_rate = format.sample_rate
        self.frame_size = format.frame_size
        self.frames = 0
        self._closed = False
        self._lock = threading.Lock()  # events may come from several threads
        self._sampling_changes: list[dict[str, Any]] = []
        wav_path = self.folder / SESSION_WAV
        if wav_path.exists() and not overwrite:
            raise RecordingError(
                f"{self.folder} already holds a recording ({SESSION_WAV}); choose another "
                "folder, or pass --overwrite to replace it"
            )
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            # the first hash of a 15 GB file takes minutes
            described = remote_model_meta(model) if isinstance(model, str) else model_meta(model)
            self.meta = {
                "format": "antiphon-recording",
                "format_version": FORMAT_VERSION,
                "sample_rate": self.sample_rate,
                "frame_size": self.frame_size,
                "channels": {"left": "assistant", "right": "user"},
                "microphone": MICROPHONE_WAV if keep_microphone else None,
                "started_at": _now(),
                "model": described,
                "sampling": dataclasses.asdict(sampling),  # as the recording started
                "sampling_at_end": dataclasses.asdict(sampling),
                "sampling_changes": self._sampling_changes,  # {"time", "frame", **sampling} each
                "seed": sampling.seed,
                "devices": devices,
                "versions": versions(),
                "summary": None,
            }
            write_json_atomically(self.folder / META_FILE, self.meta)
            self._events = open(self.folder / EVENTS_FILE, "w", encoding="utf-8")  # noqa: SIM115
            self._wav = soundfile.SoundFile(
                wav_path, "w", self.sample_rate, 2, subtype="PCM_16", format="WAV"
            )
            self._microphone = None
            if keep_microphone:
                self._microphone = soundfile.SoundFile(
                    self.folder / MICROPHONE_WAV,
                    "w",
                    self.sample_rate,
                    1,
                    subtype="PCM_16",
                    format="WAV",
                )
        except (OSError, soundfile.LibsndfileError) as exc:
            raise RecordingError(f"cannot write a recording in {self.folder}: {exc}") from exc
        _update_header_on_every_write(self._wav)
        if self._microphone is not None:
            _update_header_on_every_write(self._microphone)

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close()

    @property
    def frame_duration(self) -> float:
        return self.frame_size / self.sample_rate

    def write_frame(
        self, assistant: np.ndarray, user: np.ndarray, microphone: np.ndarray | None = None
    ) -> None:
        """One frame of both channels (float32 [frame_size] each, 24 kHz); `user` is what the
        model heard, `microphone` the raw input (kept only with keep_microphone)."""
        if assistant.shape != (self.frame_size,) or user.shape != (self.frame_size,):
            raise ValueError(
                f"write_frame takes two [{self.frame_size}] frames, got "
                f"{assistant.shape} and {user.shape}"
            )
        stereo = np.clip(np.stack([assistant, user], axis=1), -1.0, 1.0)  # PCM 16 would wrap
        with self._lock:
            if self._closed:
                raise RecordingError(f"the recording in {self.folder} is closed")
            self._wav.write(stereo.astype(np.float32, copy=False))
            if self._microphone is not None:  # the same frame count: the same clock
                raw = user if microphone is None else microphone
                self._microphone.write(np.clip(raw, -1.0, 1.0).astype(np.float32, copy=False))
            self.frames += 1

    def emit(self, event: Event) -> None:
        line = event.to_json() + "\n"
        with self._lock:
            if self._closed:  # a late event from another thread: the recording is over
                log.debug("event after close dropped: %s", line.strip())
                return
            self._events.write(line)
            self._events.flush()
            if isinstance(event, StateEvent) and event.state == "sampling":
                self._sampling_changed(event)

    def _sampling_changed(self, event: StateEvent) -> None:
        """meta.json says how the recording ended, not only how it began (written at close)."""
        try:
            params = json.loads(event.detail)
        except json.JSONDecodeError:
            params = None
        if not isinstance(params, dict):
            log.warning("a sampling event without its parameters: %r", event.detail)
            return
        self.meta["sampling_at_end"] = params
        self._sampling_changes.append({"time": event.time, "frame": event.frame, **params})

    def close(self, summary: dict[str, Any] | None = None) -> None:
        """Finish the files and rewrite meta.json with `summary`; later calls do nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._wav.flush()  # fsync, once
            self._wav.close()
            if self._microphone is not None:
                self._microphone.close()
            self._events.close()
            self.meta.update(
                ended_at=_now(),
                frames=self.frames,
                duration_s=self.frames * self.frame_duration,
                summary=summary,
            )
            write_json_atomically(self.folder / META_FILE, self.meta)


def parse_events(lines: list[str]) -> tuple[list[dict[str, Any]], list[int]]:
    """events.jsonl's lines -> the events, and the numbers (from 1) of lines that are not JSON
    objects (a process killed mid-write leaves a truncated last line)."""
    events, skipped = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            event = None
        if isinstance(event, dict):
            events.append(event)
        else:
            skipped.append(number)
    return events, skipped


def read_recording(folder: str | Path) -> Recording:
    """Read a recording back; a truncated last line of events.jsonl is skipped with a warning."""
    folder = Path(folder)
    wav_path = folder / SESSION_WAV
    try:
        audio, sample_rate = soundfile.read(wav_path, dtype="float32", always_2d=True)
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
        lines = (folder / EVENTS_FILE).read_bytes().decode("utf-8", "replace").splitlines()
    except (OSError, soundfile.LibsndfileError, json.JSONDecodeError) as exc:
        raise RecordingError(f"{folder} is not a readable recording: {exc}") from exc
    if audio.shape[1] != 2:
        raise RecordingError(f"{wav_path}: expected 2 channels, found {audio.shape[1]}")
    events, skipped = parse_events(lines)
    last = max((n for n, line in enumerate(lines, start=1) if line.strip()), default=0)
    for number in skipped:
        if number < last:
            raise RecordingError(f"{folder / EVENTS_FILE}, line {number}: not a JSON object")
        log.warning("%s: last line is truncated, skipped: %r", folder / EVENTS_FILE, lines[-1])
    return Recording(audio[:, 0].copy(), audio[:, 1].copy(), int(sample_rate), events, meta)


def export_fdb(
    recording_dir: str | Path,
    out_dir: str | Path,
    sample_rate: int = FDB_SAMPLE_RATE,
    *,
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Full-Duplex-Bench layout: out_dir/input.wav (user) and output.wav (assistant).

    Both mono PCM 16 at `sample_rate` (16 kHz by default, what FDB's evaluation assumes), the
    same length and time-aligned, since they come from the two channels of one frame clock.
    """
    out_dir = Path(out_dir)
    input_path, output_path = out_dir / FDB_INPUT, out_dir / FDB_OUTPUT
    if not overwrite and (input_path.exists() or output_path.exists()):
        raise RecordingError(f"{out_dir} already has input.wav/output.wav; pass overwrite=True")
    recording = read_recording(recording_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for path, channel in ((input_path, recording.user), (output_path, recording.assistant)):
        audio = resample(channel, recording.sample_rate, sample_rate)
        write_wav(path, audio, sample_rate)
    return input_path, output_path


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, cached by (path, size, mtime) in $ANTIPHON_CACHE or ~/.cache/antiphon."""
    path = Path(path).resolve()
    stat = path.stat()
    key = str(path)
    cache_path = hash_cache_path()
    cache = _read_hash_cache(cache_path)
    entry = cache.get(key)
    if entry and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
        return str(entry["sha256"])
    digest = hashlib.sha256()
    with (
        open(path, "rb") as f,
        tqdm(
            total=stat.st_size,
            unit="B",
            unit_scale=True,
            desc=f"sha256 {path.name}",
            disable=stat.st_size <= _HASH_PROGRESS_BYTES,
            leave=False,
        ) as bar,
    ):
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
            bar.update(len(chunk))
    sha = digest.hexdigest()
    cache = _read_hash_cache(cache_path)  # another process may have added entries meanwhile
    cache[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha}
    try:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomically(cache_path, cache)
    except OSError as exc:  # a read-only home must not stop a recording
        log.warning("cannot update the hash cache %s: %s", cache_path, exc)
    return sha


def hash_cache_path() -> Path:
    root = os.environ.get("ANTIPHON_CACHE") or Path.home() / ".cache" / "antiphon"
    return Path(root) / "sha256.json"


def model_meta(model: LoadedModel) -> dict[str, Any]:
    files = None
    if model.files is not None:
        files = {
            role: {"path": str(path), "size": path.stat().st_size, "sha256": file_sha256(path)}
            for role, path in (
                ("lm_weights", model.files.lm_weights),
                ("codec_weights", model.files.codec_weights),
                ("tokenizer", model.files.tokenizer),
            )
        }
    return {
        "name": model.name,
        "files": files,
        "lm_config": _jsonable(dataclasses.asdict(model.lm.config)),
        "codec_config": _jsonable(dataclasses.asdict(model.codec.config)),
    }


def remote_model_meta(name: str) -> dict[str, Any]:
    """A model that runs on another machine: only the node's name for it is known here."""
    return {"name": name, "files": None, "remote": True}


def versions() -> dict[str, str | None]:
    try:
        antiphon = importlib.metadata.version("antiphon")
    except importlib.metadata.PackageNotFoundError:
        antiphon = None
    return {
        "antiphon": antiphon,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "libsndfile": soundfile.__libsndfile_version__,
        "platform": platform.platform(),
    }


def _update_header_on_every_write(wav: soundfile.SoundFile) -> None:
    # Without this, libsndfile writes the data sizes into the header only at close: libsndfile
    # itself still reads a killed recording, but Python's wave and others see 0 frames.
    try:
        snd, ffi, handle = soundfile._snd, soundfile._ffi, wav._file  # type: ignore[attr-defined]
    except AttributeError:
        log.warning("this soundfile version hides libsndfile: the WAV header is written at close")
        return
    snd.sf_command(handle, _SFC_SET_UPDATE_HEADER_AUTO, ffi.NULL, 1)


def _read_hash_cache(path: Path) -> dict[str, Any]:
    try:
        cache = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as exc:
        log.warning("ignoring the unreadable hash cache %s: %s", path, exc)
        return {}
    return cache if isinstance(cache, dict) else {}


def _jsonable(data: Any) -> Any:
    return json.loads(json.dumps(data, default=str))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
