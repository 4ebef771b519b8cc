"""Audio files: read anything libsndfile reads as float32 mono at one rate; write WAVs.

audio = read_audio("question.mp3")                 # float32 [N] at 24 kHz, mono
write_wav("reply.wav", audio, 24000)                # PCM 16, clipped to [-1, 1]
write_wav("session.wav", np.stack([a, u], 1), 24000)  # [N, C] multichannel
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile
import soxr

from .errors import AudioFileError
from .reframe import to_mono

READABLE = "WAV, FLAC, OGG/Vorbis, Opus or MP3"


def read_audio(path: str | Path, sample_rate: int = 24000) -> np.ndarray:
    """The whole file as float32 mono [N] at `sample_rate`.

    Any format and rate libsndfile reads; channels are mixed down by their mean; the rate is
    converted with soxr at high quality. Raises AudioFileError naming the file when it is missing,
    unreadable, not audio, or holds no samples.
    """
    path = Path(path)
    if not path.is_file():
        if path.is_dir():
            what = "is a folder, not an audio file"
        elif path.exists():  # a device, a pipe, a socket
            what = "is not a regular file (a device or a pipe?)"
        else:
            what = "does not exist"
        raise AudioFileError(f"{path} {what}; give the path of a {READABLE} file")
    try:
        audio, file_rate = soundfile.read(path, dtype="float32", always_2d=True)  # [N, C]
    except (soundfile.SoundFileError, OSError) as exc:
        raise AudioFileError(
            f"cannot read {path} as audio ({exc}); convert it to a {READABLE} file"
        ) from exc
    if audio.shape[0] == 0:
        raise AudioFileError(f"{path} holds no audio (0 samples); record or choose another file")
    mono = to_mono(audio)
    if file_rate != sample_rate:
        mono = soxr.resample(mono, file_rate, sample_rate, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


def write_wav(
    path: str | Path, audio: np.ndarray, sample_rate: int, subtype: str = "PCM_16"
) -> None:
    """Write mono [N] or multichannel [N, C] audio as a WAV, clipping samples to [-1, 1]."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim not in (1, 2):
        raise ValueError(f"audio must be [N] or [N, C], got shape {audio.shape}")
    try:
        soundfile.write(Path(path), np.clip(audio, -1.0, 1.0), sample_rate, subtype=subtype)
    except (soundfile.SoundFileError, OSError) as exc:
        raise AudioFileError(
            f"cannot write {path} ({exc}); check that its folder exists and is writable"
        ) from exc
