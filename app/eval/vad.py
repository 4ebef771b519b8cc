"""Who speaks when: Silero VAD (its model ships inside the `silero-vad` wheel), at 16 kHz.

    segments = speech_segments(audio, 24000)   # [(start_s, end_s), ...], sorted, disjoint

The defaults are silero's own, the ones Full-Duplex-Bench's evaluation uses (threshold 0.5,
speech at least 250 ms, silences at least 100 ms, 30 ms of padding on each side), so segment
boundaries are comparable with the benchmark's.

`silero-vad` is an optional dependency (the `eval` extra), imported on first use. It needs only
torch and `packaging`: the TorchScript model runs without torchaudio or onnxruntime.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import soxr
import torch

from model.errors import AntiphonError

VAD_SAMPLE_RATE = 16000
INSTALL_HINT = "pip install --no-deps silero-vad packaging (or: bash scripts/setup.sh --eval)"

Segment = tuple[float, float]  # (start, end) in seconds


class VadUnavailableError(AntiphonError):
    """silero-vad is not installed (it is optional: the `eval` extra)."""


@dataclass(frozen=True)
class VadConfig:
    threshold: float = 0.5  # speech probability above which a 32 ms window is speech
    min_speech_s: float = 0.25  # shorter speech is dropped
    min_silence_s: float = 0.1  # shorter silences do not split a segment
    pad_s: float = 0.03  # each segment is widened by this on both sides
    # Silero's ends lag the speech (by 75 ms on average, up to 120 ms, on espeak-ng speech);
    # each boundary is moved inwards, by at most `refine_s`, to the first / last 5 ms window
    # within `refine_db` of the segment's loudest. Over a noise floor that is within
    # `refine_db` of the speech nothing moves. None: silero's boundaries as they are.
    refine_db: float | None = 30.0
    refine_s: float = 0.15


def speech_segments(
    audio: np.ndarray, sample_rate: int, config: VadConfig | None = None
) -> list[Segment]:
    """Speech segments of a mono float signal, in seconds from its start."""
    config = config or VadConfig()
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"speech_segments takes mono audio [N], got shape {audio.shape}")
    if sample_rate != VAD_SAMPLE_RATE:
        audio = soxr.resample(audio, sample_rate, VAD_SAMPLE_RATE, quality="HQ")
    if len(audio) == 0:
        return []
    get_speech_timestamps, model = _silero()
    threads = torch.get_num_threads()
    # a tiny model called once per 32 ms window: more threads only add overhead (3 to 10 times
    # slower with 2 threads than with 1 on a busy 2-core machine)
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            found = get_speech_timestamps(
                torch.from_numpy(np.ascontiguousarray(audio)),
                model,
                threshold=config.threshold,
                sampling_rate=VAD_SAMPLE_RATE,
                min_speech_duration_ms=round(1000 * config.min_speech_s),
                min_silence_duration_ms=round(1000 * config.min_silence_s),
                speech_pad_ms=round(1000 * config.pad_s),
            )
    finally:
        torch.set_num_threads(threads)
    # samples, not return_seconds: silero rounds seconds to 0.1 s by default
    segments = [(s["start"], s["end"]) for s in found]
    if config.refine_db is not None:
        segments = _refine(audio, segments, config.refine_db, config.refine_s)
    return [(start / VAD_SAMPLE_RATE, end / VAD_SAMPLE_RATE) for start, end in segments]


def _refine(
    audio: np.ndarray, segments: list[tuple[int, int]], drop_db: float, limit_s: float
) -> list[tuple[int, int]]:
    """Move segment boundaries (samples at 16 kHz) in to where the signal is loud."""
    hop = VAD_SAMPLE_RATE // 200  # 5 ms
    windows = len(audio) // hop
    power = np.mean(audio[: windows * hop].reshape(windows, hop) ** 2, axis=1)
    level = 10 * np.log10(power + 1e-12)  # dB per 5 ms window
    limit = round(limit_s * VAD_SAMPLE_RATE / hop)
    refined = []
    for start, end in segments:
        first_window, last_window = start // hop, min(windows, -(-end // hop))
        local = level[first_window:last_window]
        if len(local) == 0:
            refined.append((start, end))
            continue
        loud = np.flatnonzero(local > local.max() - drop_db)
        first = min(int(loud[0]), limit)
        last = max(int(loud[-1]) + 1, len(local) - limit)
        refined.append(
            (max(start, (first_window + first) * hop), min(end, (first_window + last) * hop))
        )
    return refined


def require() -> None:
    """Load the model now (raising VadUnavailableError with the install command if missing)."""
    _silero()


@functools.cache
def _silero() -> tuple[Any, Any]:
    threads = torch.get_num_threads()
    try:
        from silero_vad import get_speech_timestamps, load_silero_vad
    except ImportError as exc:
        raise VadUnavailableError(
            f"voice activity detection needs the silero-vad package: {INSTALL_HINT}"
        ) from exc
    finally:
        # importing silero_vad calls torch.set_num_threads(1) for the whole process
        torch.set_num_threads(threads)
    with warnings.catch_warnings():
        # torch >= 2.10 deprecates torch.jit.load, which silero's packaged model still uses
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*torch.jit")
        model = load_silero_vad()
    return get_speech_timestamps, model
