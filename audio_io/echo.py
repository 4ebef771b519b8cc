"""Acoustic echo cancellation: the assistant must not hear itself through the user's loudspeakers.

    echo = EchoCanceller(EchoConfig(sample_rate=24000, frame_size=1920))
    echo.played(reply_frame, render_time)          # what went to the speaker, and when it sounds
    heard = echo.cancel(mic_frame, capture_time)   # EchoFrame: cleaned pcm, ERLE estimate

The canceller is WebRTC's audio processing module (AEC3: linear adaptive filter, delay
estimator, residual echo suppressor), through the `livekit` wheel, which ships it prebuilt
(docs/echo.md says why this one and not SpeexDSP or Debian's libwebrtc-audio-processing1).

Alignment: `played` puts each reply frame on a timeline at the time the speaker will sound it
(now + jitter buffer + device latency, on the clock of the microphone's capture times); `cancel`
takes from it the reference that was sounding while the microphone frame was captured, early by
`lead` plus the devices' reported latencies. Reported latencies can be too large (JACK's dummy
driver reports two periods more than the loop has), and a render time estimated late would put
the echo before its reference, which no canceller can remove; taken that early, the echo always
comes after it, by the true device latencies plus the room. That rest is AEC3's delay
estimator's job: it follows delays up to about 450 ms (measured) and re-locks when they jump,
but slowly (1.3 to 1.8 s for a 70 ms jump, offline). With `follow_delay` (on by default) a jump
in the echo's lag behind the reference (`echo_delay.DelayTracker`, which the user's voice does
not move) is taken back out by shifting the reference, so AEC3 keeps seeing the delay it has
locked on (the tracker measures against the reference unshifted, so a delay that comes back is
followed back). That needs a reference placed where it sounds, without jumps of its own: the
devices' clocks (audio_io.streams.SampleClock) keep it so through underruns and xruns.

`played` and `cancel` may run on different threads (the event loop, the inference thread).
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .echo_delay import DelayTracker, LagEstimate
from .errors import AudioError

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install livekit (or: bash scripts/setup.sh), or pass --no-echo-cancel"


class EchoCancelError(AudioError):
    """The echo canceller cannot run (its library is missing or refuses the audio)."""


@dataclass(frozen=True)
class EchoConfig:
    sample_rate: int = 24000  # of the frames given to `played` and `cancel`
    frame_size: int = 1920  # samples per `cancel` call (one model frame)
    lead: float = 0.06  # seconds the reference is taken early, beyond the devices' latencies
    history: float = 2.0  # seconds of played audio kept for alignment
    # ERLE is estimated only where the aligned reference is louder than this (dBFS): with the
    # far end silent, input over output measures the user, not the canceller.
    far_end_floor_db: float = -50.0
    # A played frame estimated to start within this many seconds of where the previous one
    # ended continues it: render-time estimates wander by a few milliseconds (up to 11 ms under
    # load, measured on JACK), and every shift of the reference costs AEC3 a re-adaptation.
    snap: float = 0.05
    # Follow a jump in the echo's delay by shifting the reference (audio_io/echo_delay.py), so
    # that AEC3, which re-locks slowly after a delay jump, keeps seeing the same delay. On the
    # JACK loops, with the devices' clocks continuous: re-converged within 1 s of a 70 ms jump
    # in 30 of 32 quiet runs (the others 1.04, 1.92 s; without: not within 3 s in 5 of 6 runs),
    # no move on the first path (docs/echo.md, "Moves that waited").
    follow_delay: bool = True
    # Seconds a followed move is taken short. A shift too large puts the echo before where AEC3
    # locked on, and it is slow to find it there; too small leaves it later, inside its filter.
    # Offline, 20 jumps re-converged within 1 s: 18 with the move exact, 5 with it 7 ms too
    # large, 14 with it 3 ms too large, 19 and 17 with it 4 and 12 ms too small. The tracker's
    # moves on the JACK loop erred by -3 to +7 ms (19 of 20 within -3 and 0). Offline with
    # this margin: 19 exact, 19 with the move 7 ms too large.
    follow_margin: float = 0.006
    # Seconds of a silent far end (the aligned reference under `far_end_floor_db`) after which
    # the microphone goes on untouched (None: never). AEC3 with nothing to cancel still
    # reshapes the voice (its high-pass and band processing): with the far end silent, held-out
    # dialogues' user channels through it kept 38% of their first-codebook codes, and the demo
    # LM's teacher-forced heard_acc fell from 0.377 to 0.347 (scripts/echo_hearing.py; a
    # 1.25 ms shift alone: 0.373). By then the echo of the last sound played has died out (the
    # JACK rooms' responses: 0.02-0.12 s delay, 0.15 s long). AEC3 is fed all along, so it
    # stays adapted; the switch either way is a `ramp` long crossfade at a frame's start.
    pass_through_after: float | None = 0.5
    ramp: float = 0.01

    @property
    def block_size(self) -> int:
        """WebRTC's processing takes exactly 10 ms at a time."""
        return self.sample_rate // 100


@dataclass(frozen=True)
class EchoFrame:
    pcm: np.ndarray  # [frame_size] float32: the microphone with the echo removed
    erle_db: float | None  # microphone over output power in dB; None while the far end is silent
    far_end_db: float  # level of the aligned reference, dBFS
    passed: bool = False  # the microphone as it came (the far end silent long enough)


class FarEndTimeline:
    """Played audio placed at the times it sounds, read back by time; silence where none.

    Positions are samples on the caller's clock (seconds * rate). A frame that starts within
    `snap` samples of where the previous one ended continues it exactly: the speaker plays frames
    back to back, and render-time estimates jitter by a few milliseconds.
    """

    def __init__(self, sample_rate: int, seconds: float, snap: int) -> None:
        self.sample_rate = sample_rate
        self.snap = snap
        self._ring = np.zeros(round(seconds * sample_rate), np.float32)
        self._end: int | None = None  # position after the last written sample
        self.writes = 0
        # (write, samples) of each frame placed more than `snap` from where the previous one
        # ended: the reference moved there (an underrun's gap, an overrun's skip, or the
        # render-time estimate jumping)
        self.jumps: list[tuple[int, int]] = []

    def write(self, pcm: np.ndarray, start_time: float) -> None:
        start = round(start_time * self.sample_rate)
        self.writes += 1
        if self._end is not None:
            logger.debug("played frame placed %+d samples from the previous end", start - self._end)
            if abs(start - self._end) > self.snap:
                self.jumps.append((self.writes - 1, start - self._end))
            if abs(start - self._end) <= self.snap:
                start = self._end
            elif start > self._end:  # a gap (underrun, pause): it sounded as silence
                self._put(self._end, np.zeros(min(start - self._end, len(self._ring)), np.float32))
        self._put(start, pcm)
        self._end = start + len(pcm)

    def read(self, start_time: float, num_samples: int) -> np.ndarray:
        out = np.zeros(num_samples, np.float32)
        if self._end is None:
            return out
        start = round(start_time * self.sample_rate)
        oldest = self._end - len(self._ring)
        lo, hi = max(start, oldest), min(start + num_samples, self._end)
        if lo < hi:
            index = np.arange(lo, hi) % len(self._ring)
            out[lo - start : hi - start] = self._ring[index]
        return out

    def _put(self, start: int, pcm: np.ndarray) -> None:
        pcm = pcm[-len(self._ring) :]
        index = np.arange(start, start + len(pcm)) % len(self._ring)
        self._ring[index] = pcm


class EchoCanceller:
    def __init__(
        self,
        config: EchoConfig | None = None,
        device_latency: Callable[[], float] | None = None,
    ) -> None:
        """`device_latency`: the output's plus the input's reported latency, in seconds, as
        PortAudio has them once the streams run (asked for every frame)."""
        self.config = config = config or EchoConfig()
        self.device_latency = device_latency or (lambda: 0.0)
        if config.frame_size % config.block_size:
            raise ValueError(
                f"frame_size {config.frame_size} is not a whole number of 10 ms blocks "
                f"at {config.sample_rate} Hz"
            )
        self._rtc = _livekit_rtc()
        self._lock = threading.Lock()
        self._timeline = FarEndTimeline(
            config.sample_rate, config.history, round(config.snap * config.sample_rate)
        )
        self._apm = self._new_apm()
        self._tracker = DelayTracker(config.sample_rate)
        self._shift = 0.0  # seconds the reference is taken later, following the echo's delay
        self.frames = 0  # frames cancelled since the last reset
        self._quiet = 0.0  # seconds the aligned reference has been silent
        self._passing = False  # the last frame went out as the microphone had it
        # (frame, seconds) of each move of the echo's delay followed (follow_delay)
        self.delay_moves: list[tuple[int, float]] = []
        # (frame, samples) of each microphone frame whose capture time is more than `snap` off
        # one frame after the previous one's: a dropped frame, or the capture clock jumping
        self.capture_jumps: list[tuple[int, int]] = []
        self._last_capture: float | None = None
        # The first call starts LiveKit's native runtime (threads, allocations): here, before
        # the microphone runs, not in the first frame, where it would cost queued frames.
        self.cancel(np.zeros(config.frame_size, np.float32), 0.0)
        self.reset()

    def _new_apm(self) -> Any:
        # High-pass: the DC and rumble of cheap microphones hurt the adaptive filter. Noise
        # suppression and gain control stay off: the model was trained on the raw voice.
        return self._rtc.AudioProcessingModule(echo_cancellation=True, high_pass_filter=True)

    def reset(self) -> None:
        """Forget the echo path and the played audio (a new conversation on the same devices)."""
        with self._lock:
            self._apm = self._new_apm()
            self._tracker = DelayTracker(self.config.sample_rate)
            self._shift = 0.0
            self.frames = 0
            self._quiet = 0.0
            self._passing = False
            self.delay_moves = []
            self.capture_jumps = []
            self._last_capture = None
            config = self.config
            self._timeline = FarEndTimeline(
                config.sample_rate, config.history, round(config.snap * config.sample_rate)
            )

    def played(self, pcm: np.ndarray, render_time: float) -> None:
        """`pcm` (float32, any length) will sound from `render_time` on (capture-time clock)."""
        with self._lock:
            self._timeline.write(np.asarray(pcm, np.float32), render_time)

    @property
    def placement_jumps(self) -> list[tuple[int, int]]:
        """(played frame, samples) of each reply frame placed more than `snap` from where the
        previous one ended (FarEndTimeline.jumps)."""
        with self._lock:
            return list(self._timeline.jumps)

    @property
    def lag_estimates(self) -> list[tuple[int, LagEstimate]]:
        """(frame, estimate) of the delay tracker's last estimates (one for each frame in which
        the far end sounded), oldest first: why a move of the delay came when it did."""
        with self._lock:
            return list(self._tracker.estimates)

    def cancel(self, mic: np.ndarray, capture_time: float) -> EchoFrame:
        """One microphone frame (float32 [frame_size]) whose first sample was captured at
        `capture_time`, with the echo of what was playing meanwhile removed."""
        config = self.config
        if mic.shape != (config.frame_size,):
            raise ValueError(f"cancel takes a [{config.frame_size}] frame, got {mic.shape}")
        with self._lock:
            if self._last_capture is not None:  # a capture time off the frame grid: it moved
                step = round((capture_time - self._last_capture) * config.sample_rate)
                logger.debug(
                    "microphone frame %+d samples from the previous one's end",
                    step - config.frame_size,
                )
                if abs(step - config.frame_size) > self._timeline.snap:
                    self.capture_jumps.append((self.frames, step - config.frame_size))
            self._last_capture = capture_time
            placed_at = capture_time + config.lead + self.device_latency()
            reference = self._timeline.read(placed_at - self._shift, config.frame_size)
            near = _to_pcm16(mic)
            far = _to_pcm16(reference)
            n, rate = config.block_size, config.sample_rate
            out = np.empty_like(near)
            try:
                for i in range(0, config.frame_size, n):
                    far_block = self._rtc.AudioFrame(far[i : i + n].tobytes(), rate, 1, n)
                    self._apm.process_reverse_stream(far_block)
                    self._apm.set_stream_delay_ms(0)  # aligned here; AEC3 finds the rest
                    near_block = self._rtc.AudioFrame(near[i : i + n].tobytes(), rate, 1, n)
                    self._apm.process_stream(near_block)
                    out[i : i + n] = np.frombuffer(near_block.data, np.int16)
            except RuntimeError as exc:
                raise EchoCancelError(f"WebRTC's echo canceller refused the audio: {exc}") from exc
            if config.follow_delay:  # against the reference unshifted (echo_delay's docstring)
                placed = reference
                if self._shift:
                    placed = self._timeline.read(placed_at, config.frame_size)
                moved = self._tracker.observe(placed, mic)
                if moved:
                    # AEC3 goes on seeing the lag it first locked on (+ the margin, once: each
                    # move is measured from the placed reference, so no error adds up)
                    assert self._tracker.lag is not None and self._tracker.first is not None
                    self._shift = self._tracker.lag - self._tracker.first - config.follow_margin
                    self.delay_moves.append((self.frames, moved))
                    logger.info("the echo's delay moved by %+.0f ms: followed", 1000 * moved)
            self.frames += 1
            far_db = _power_db(reference)
            audible = far_db > config.far_end_floor_db
            self._quiet = 0.0 if audible else self._quiet + config.frame_size / config.sample_rate
            was_passing = self._passing
            self._passing = (
                config.pass_through_after is not None and self._quiet >= config.pass_through_after
            )
            passing = self._passing
        pcm = out.astype(np.float32) / 32768.0
        raw = np.asarray(mic, np.float32)
        if passing:  # entering pass-through from the cancelled voice, or in it
            pcm = raw if was_passing else _crossfade(pcm, raw, config)
        elif was_passing:  # the far end sounds again: back to the cancelled voice
            pcm = _crossfade(raw, pcm, config)
        erle = _power_db(mic) - _power_db(pcm) if audible else None
        return EchoFrame(pcm, erle, far_db, passed=passing)


def _crossfade(before: np.ndarray, after: np.ndarray, config: EchoConfig) -> np.ndarray:
    """`after`, entered from `before` over its first `config.ramp` seconds."""
    n = min(len(after), max(1, round(config.ramp * config.sample_rate)))
    weight = (np.arange(1, n + 1, dtype=np.float32) / (n + 1)).astype(np.float32)
    out = after.copy()
    out[:n] = before[:n] * (1 - weight) + after[:n] * weight
    return out


def _livekit_rtc() -> Any:
    try:
        return importlib.import_module("livekit.rtc")
    except ImportError as exc:  # missing wheel, or its native library cannot load
        raise EchoCancelError(
            f"echo cancellation needs WebRTC's audio processing from the livekit package "
            f"({exc}): {INSTALL_HINT}"
        ) from exc


def _to_pcm16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)


def _power_db(x: np.ndarray) -> float:
    power = float(np.mean(np.square(x, dtype=np.float64))) if len(x) else 0.0
    return 10 * float(np.log10(power + 1e-12))
