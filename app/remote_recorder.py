"""A recording of a conversation whose model runs elsewhere (`antiphon talk --remote`).

`app.recording.Recorder` describes the model from its weights; on a remote terminal only the
node's name for the model exists, so this writes the same three files (a WAV that survives
SIGKILL, events.jsonl, meta.json) with that description instead. `read_recording` and
`export_fdb` read it like any other recording.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile

from model import SamplingParams

from . import recording
from .events import Event


@dataclass(frozen=True)
class AudioFormat:
    """A node's audio format (what `app.talk._devices` reads of an engine)."""

    sample_rate: int
    frame_size: int

    @property
    def frame_duration(self) -> float:
        return self.frame_size / self.sample_rate


class RemoteRecorder:
    """An EventSink that also takes the two audio channels, one frame at a time."""

    def __init__(
        self,
        folder: Path,
        model: str,
        format: AudioFormat,
        sampling: SamplingParams,
        devices: dict[str, str],
    ) -> None:
        self.folder = Path(folder)
        self.frame_size = format.frame_size
        self.sample_rate = format.sample_rate
        self.frames = 0
        wav_path = self.folder / recording.SESSION_WAV
        if wav_path.exists():
            raise recording.RecordingError(f"{self.folder} already holds a recording")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.meta: dict[str, Any] = {
                "format": "antiphon-recording",
                "format_version": recording.FORMAT_VERSION,
                "sample_rate": format.sample_rate,
                "frame_size": format.frame_size,
                "channels": {"left": "assistant", "right": "user"},
                "started_at": recording._now(),
                "model": {"name": model, "files": None, "remote": True},
                "sampling": dataclasses.asdict(sampling),
                "seed": sampling.seed,
                "devices": dict(devices),
                "versions": recording.versions(),
                "summary": None,
            }
            recording._write_json_atomically(self.folder / recording.META_FILE, self.meta)
            self._events = open(self.folder / recording.EVENTS_FILE, "w", encoding="utf-8")  # noqa: SIM115
            self._wav = soundfile.SoundFile(
                wav_path, "w", format.sample_rate, 2, subtype="PCM_16", format="WAV"
            )
        except (OSError, soundfile.LibsndfileError) as exc:
            raise recording.RecordingError(f"cannot record in {self.folder}: {exc}") from exc
        recording._update_header_on_every_write(self._wav)
        self._closed = False

    def write_frame(self, assistant: np.ndarray, user: np.ndarray) -> None:
        if not self._closed:
            self._wav.write(np.clip(np.stack([assistant, user], axis=1), -1.0, 1.0))
            self.frames += 1

    def emit(self, event: Event) -> None:
        if not self._closed:
            self._events.write(event.to_json() + "\n")
            self._events.flush()

    def close(self, summary: dict[str, Any] | None = None) -> None:
        if self._closed:
            return
        self._closed = True
        self._wav.close()
        self._events.close()
        duration = self.frames * self.frame_size / self.sample_rate
        self.meta.update(
            ended_at=recording._now(), frames=self.frames, duration_s=duration, summary=summary
        )
        recording._write_json_atomically(self.folder / recording.META_FILE, self.meta)
