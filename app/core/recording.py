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
    recorder.close(recorder.summary())         # app.core.timing, of the frames recorded

A recording is self-contained whenever it starts. One started mid-conversation is told where
(`start_at(Origin(time, frame, counters))`, before its first frame): its events are rebased to
its own frame 0 and time 0 (events of earlier frames are left out), the running counters of its
frame events (underruns, xruns, ...) count from that moment, and `summary()` covers its frames
only. Its time is the conversation's: `write_frame(..., frame=index)` with the conversation's
frame index writes the frames the model never processed (a remote node that skipped them, a
microphone frame dropped to keep up) as silence in both channels, with a "silence" state event
at the first of them; `pad_to(index)` does the same up to the end of the recording.

`model` is the LoadedModel (described by its files, hashed) or, for a conversation whose model
runs elsewhere (`antiphon talk --remote`), the name the node gives it.

Crash safety: libsndfile writes samples straight to the file descriptor (no user-space buffer),
and the WAV header's sizes are rewritten after every write (SFC_SET_UPDATE_HEADER_AUTO), so after
SIGKILL every reader, not only libsndfile, sees all the frames written. Nothing is fsynced per
frame (a slow disk must not stall the inference thread): a power cut can lose the last seconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
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
from .events import Event, FrameStats, StateEvent
from .files import FDB_INPUT, FDB_OUTPUT, write_json_atomically
from .models import LoadedModel
from .timing import COUNTERS, Timings

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


class Origin(NamedTuple):
    """Where in its conversation a recording starts."""

    time: float = 0.0  # the conversation's time (its events' "time") at the recording's time 0
    frame: int = 0  # the conversation's frame index of the recording's frame 0
    # the conversation's running counters then (COUNTERS)
    counters: Mapping[str, int] = MappingProxyType({})


SILENCE = "silence"  # the state of the event that marks frames written as silence
STOPPED = "recording_stopped"  # the state of the event that says why the audio ends early
WRITE_FAILED_HINT = "free disk space or record to another folder; what was written is kept"


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
        self.frames = 0  # written, silence included
        self.silent_frames = 0  # written as silence: the model never processed them
        self.origin = Origin()
        self.failure: str | None = None  # why the audio could not be written, if it could not
        self.timings = Timings()  # of the frame events recorded, their counters rebased
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

    def start_at(self, origin: Origin) -> None:
        """Where in its conversation this recording starts (before its first frame)."""
        with self._lock:
            assert self.frames == 0, "a recording's origin is set before its first frame"
            self.origin = origin

    def write_frame(
        self,
        assistant: np.ndarray,
        user: np.ndarray,
        microphone: np.ndarray | None = None,
        frame: int | None = None,
    ) -> None:
        """One frame of both channels (float32 [frame_size] each, 24 kHz); `user` is what the
        model heard, `microphone` the raw input (kept only with keep_microphone).

        `frame`: the conversation's index of this frame. Frames skipped since the last one
        written are written as silence first; a frame from before the recording's start, or
        one already written (a late reply), is left out.
        """
        if assistant.shape != (self.frame_size,) or user.shape != (self.frame_size,):
            raise ValueError(
                f"write_frame takes two [{self.frame_size}] frames, got "
                f"{assistant.shape} and {user.shape}"
            )
        stereo = np.clip(np.stack([assistant, user], axis=1), -1.0, 1.0)  # PCM 16 would wrap
        with self._lock:
            self._check_open()
            if frame is not None and frame < self.origin.frame + self.frames:
                log.debug("frame %d is before this recording's next frame: left out", frame)
                return
            try:
                if frame is not None:
                    self._silence_until(frame - self.origin.frame)
                self._wav.write(stereo.astype(np.float32, copy=False))
                if self._microphone is not None:  # the same frame count: the same clock
                    raw = user if microphone is None else microphone
                    self._microphone.write(np.clip(raw, -1.0, 1.0).astype(np.float32, copy=False))
            except (OSError, RuntimeError) as exc:  # a full disk; libsndfile's are RuntimeErrors
                raise self._write_failed(exc) from exc
            self.frames += 1

    def pad_to(self, frame: int) -> None:
        """Silence up to the conversation's frame `frame` (exclusive): where the recording ends
        when the frames before it were never processed (lost on the way, or still awaited)."""
        with self._lock:
            self._check_open()
            try:
                self._silence_until(frame - self.origin.frame)
            except (OSError, RuntimeError) as exc:
                raise self._write_failed(exc) from exc

    def _check_open(self) -> None:
        if self._closed:
            raise RecordingError(f"the recording in {self.folder} is closed")
        if self.failure is not None:
            raise RecordingError(f"the recording in {self.folder} stopped: {self.failure}")

    def _write_failed(self, exc: BaseException) -> RecordingError:
        """The audio cannot be written (a full disk): the recording stops where its last whole
        frame ends, says so in its events and meta.json, and records nothing more."""
        self.failure = f"cannot write to {self.folder / SESSION_WAV}: {exc} (is the disk full?)"
        with contextlib.suppress(OSError, RuntimeError):  # a part of a frame may have gone out
            self._wav.truncate(self.frames * self.frame_size)
            if self._microphone is not None:
                self._microphone.truncate(self.frames * self.frame_size)
        event = StateEvent(self.frames * self.frame_duration, self.frames, STOPPED, self.failure)
        with contextlib.suppress(OSError):
            self._events.write(event.to_json() + "\n")
            self._events.flush()
        self.meta["stopped_early"] = self.failure
        return RecordingError(self.failure)

    def _silence_until(self, end: int) -> None:
        """Write silence from the next frame up to the recording's frame `end` (exclusive)."""
        count = end - self.frames
        if count <= 0:
            return
        detail = (
            f"{count} frame(s) were never processed (lost on the way, or dropped to keep up): "
            "silence in both channels"
        )
        event = StateEvent(self.frames * self.frame_duration, self.frames, SILENCE, detail)
        self._wav.write(np.zeros((count * self.frame_size, 2), dtype=np.float32))
        if self._microphone is not None:
            self._microphone.write(np.zeros(count * self.frame_size, dtype=np.float32))
        self._events.write(event.to_json() + "\n")
        self._events.flush()
        self.frames += count
        self.silent_frames += count

    def emit(self, event: Event) -> None:
        with self._lock:
            if self._closed or self.failure:  # a late event, or the recording has stopped
                log.debug("event after the recording's end dropped: %s", event.to_json())
                return
            rebased = self._rebased(event)
            if rebased is None:
                return
            try:
                self._events.write(rebased.to_json() + "\n")
                self._events.flush()
            except OSError as exc:  # a full disk: the conversation goes on, the audio may too
                log.warning("event not recorded in %s: %s", self.folder / EVENTS_FILE, exc)
                return
            if isinstance(rebased, FrameStats):
                self.timings.add_stats(rebased)
            if isinstance(rebased, StateEvent) and rebased.state == "sampling":
                self._sampling_changed(rebased)

    def _rebased(self, event: Event) -> Event | None:
        """The event on this recording's clock; None for one of a frame before its start."""
        origin = self.origin
        if origin == Origin():  # a recording from the conversation's start: as it came
            return event
        if event.frame >= 0 and event.frame < origin.frame:
            return None
        changes: dict[str, Any] = {"time": max(0.0, round(event.time - origin.time, 6))}
        if event.frame >= 0:
            changes["frame"] = event.frame - origin.frame
        if isinstance(event, FrameStats):
            for name in COUNTERS:
                changes[name] = max(0, getattr(event, name) - origin.counters.get(name, 0))
        return dataclasses.replace(event, **changes)

    def update_counters(self, running: Mapping[str, int]) -> None:
        """The conversation's running counters as they stand now (at its end, say), counted
        from the recording's start."""
        with self._lock:
            for name in COUNTERS:
                since = int(running.get(name, 0)) - self.origin.counters.get(name, 0)
                self.timings.counters[name] = max(self.timings.counters[name], since)

    def summary(self, **extra: Any) -> dict[str, Any]:
        """The timing summary (app.core.timing) of the frames recorded, and `extra`."""
        with self._lock:
            return self.timings.summary(self.frame_duration, **extra)

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
            self.meta.update(
                ended_at=_now(),
                frames=self.frames,
                silent_frames=self.silent_frames,
                duration_s=self.frames * self.frame_duration,
                summary=summary,
            )
            problems = []  # each step is tried: a full disk must not cost the others
            steps = [self._wav.flush, self._wav.close, self._events.close, self._write_meta]
            if self._microphone is not None:
                steps.insert(2, self._microphone.close)
            for step in steps:
                try:
                    step()  # the WAV's flush: fsync, once
                except (OSError, RuntimeError) as exc:
                    problems.append(str(exc))
            if problems:
                raise RecordingError(
                    f"the recording in {self.folder} was not finished ({'; '.join(problems)}): "
                    "its audio is readable as far as it was written"
                )

    def _write_meta(self) -> None:
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
