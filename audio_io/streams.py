"""Capture and playback through PortAudio (sounddevice) at 24 kHz frames, whatever the device.

Microphone and Speaker stream at the device's own rate and give the app 24 kHz frames:

    with Microphone("USB", on_frame=lambda frame, t: queue_frame(frame, t)) as mic, \\
         Speaker("USB") as speaker:
        speaker.write(reply_frame)          # float32 [1920] at 24 kHz, from any thread

Both open the device at its default rate (JACK accepts no other) with up to two channels, and
convert in Python: the Microphone mixes to mono, resamples to 24 kHz and re-frames to exactly
1920 samples inside the PortAudio callback; the Speaker resamples in `write` (the caller's thread)
and buffers at the device rate, so its callback only copies out of the jitter buffer.

Callbacks never block and never raise: an exception is counted (`callback_errors`), kept
(`last_callback_error`) and logged once. A stream that dies under us (the device unplugged, the
sound server gone) is noticed within `WATCH_INTERVAL` by a watcher thread or by PortAudio's
finished callback; it sets `error` and calls `on_error(message)` from that thread.

A dead stream is never stopped or closed: PortAudio 19.6's JACK host API then waits 10 minutes for
a process cycle that never comes (pthread_cond_timedwait of 600 s, seen here with Debian's
libportaudio2). `close()` abandons it instead and unregisters sounddevice's exit handler, which
would hang the same way; PortAudio cannot be used again in this process after that.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .devices import DeviceInfo, Kind, find_device, portaudio
from .errors import AudioDeviceError
from .jitter import JitterBuffer
from .reframe import Reframer, StreamResampler, to_mono

log = logging.getLogger(__name__)

FrameCallback = Callable[[np.ndarray, float], None]  # (frame [frame_size], capture_time)
ErrorCallback = Callable[[str], None]
WATCH_INTERVAL = 0.1  # seconds between checks that a running stream is still alive


class _Lifecycle:
    """Starts, watches and closes one PortAudio stream; notices when it dies under us."""

    def __init__(self, device: DeviceInfo, kind: Kind, on_error: ErrorCallback | None) -> None:
        self.device = device
        self.kind = kind
        self.on_error = on_error
        self.stream: Any = None  # sounddevice.InputStream or OutputStream once started
        self.error: str | None = None  # why the stream died; None while it is fine
        self._closing = False
        self._stop_watching = threading.Event()
        self._watcher: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self, open_stream: Callable[[Callable[[], None]], Any]) -> None:
        if self.stream is not None:
            raise RuntimeError(f"the {self.kind} stream was started before; make a new one")
        sd = portaudio()
        stream = None
        try:
            stream = open_stream(self._finished)
            stream.start()
        except sd.PortAudioError as exc:
            if stream is not None:
                stream.close(ignore_errors=True)
            raise AudioDeviceError(
                f"cannot open {self.kind} device {self.device.describe()} at "
                f"{self.device.default_sample_rate} Hz ({exc}); close programs that hold it or "
                "pick another device (`antiphon devices` lists them)"
            ) from exc
        self.stream = stream
        self._watcher = threading.Thread(
            target=self._watch, name=f"audio_io {self.kind} watcher", daemon=True
        )
        self._watcher.start()

    def close(self) -> None:
        """Stop and close the stream; idempotent; returns at once for a stream that died."""
        with self._lock:
            if self.stream is None or self._closing:
                return
            self._closing = True
        self._stop_watching.set()
        if self._watcher is not None:
            self._watcher.join()
        if self.error is None and not self.stream.active:  # died just now, before the watcher saw
            self._died("unexpectedly")
        if self.error is not None:
            _abandon_portaudio(self.device)
            return
        self.stream.stop(ignore_errors=True)
        self.stream.close(ignore_errors=True)

    def _finished(self) -> None:  # PortAudio's finished callback: after stop(), or on its own
        if not self._closing:
            self._died("(PortAudio ended the stream)")

    def _watch(self) -> None:
        while not self._stop_watching.wait(WATCH_INTERVAL):
            if not self.stream.active and not self._closing:
                self._died("unexpectedly")
                return

    def _died(self, reason: str) -> None:
        with self._lock:
            if self.error is not None:
                return
            self.error = (
                f"{self.kind} device {self.device.describe()} stopped {reason}: was it unplugged, "
                "or did its sound server (PipeWire, PulseAudio, JACK) quit? Restart antiphon "
                "once it is back"
            )
        log.error("%s", self.error)
        if self.on_error is not None:
            try:
                self.on_error(self.error)
            except Exception:  # a broken handler must not hide the device error itself
                log.exception("on_error handler failed")


class SampleClock:
    """When a stream's sample k reaches the converter, on the time.monotonic() clock.

    t(k) = origin + k / rate. A callback runs late, never early (on a busy machine tens of
    milliseconds late), so each callback's own times jitter by that much while the earliest
    origin seen stays put, which the echo canceller's alignment needs. The kept origin creeps
    later by `drift` seconds a second, so that a device clock slower than the system's is
    followed; any observation earlier than it takes over at once. The first `skip` callbacks of a
    stream are not used: PortAudio's times for them were seen off by hundreds of milliseconds on
    JACK.

    `rebase` after an xrun: the device may have skipped samples, and the origin moved later by
    as much. The kept origin still answers (no jump to a cruder estimate) until `skip` callbacks
    since have been observed; then the earliest of them takes over, later or earlier: one step,
    by what the xrun skipped (none if it skipped nothing). On JACK the microphone and the speaker
    are one client and see the same xruns, so both steps are the same and the echo reference
    keeps its place against the microphone.
    """

    def __init__(self, rate: int, drift: float = 2e-4, skip: int = 4) -> None:
        self.rate = rate
        self.drift = drift
        self.skip = skip
        self._seen = 0
        self._origin: tuple[float, float] | None = None  # (origin, when it was observed)
        self._latest = 0.0  # time of the latest observation
        self._fresh: list[float] | None = None  # origins observed since a rebase

    def observe(self, index: int, time_of_index: float) -> None:
        self._seen += 1
        if self._seen <= self.skip:
            return
        self._latest = time_of_index
        origin = time_of_index - index / self.rate
        if self._fresh is not None:
            self._fresh.append(origin)
            if len(self._fresh) < self.skip:
                return
            self._origin, self._fresh = (min(self._fresh), time_of_index), None
        elif self._origin is None or origin < self._crept():
            self._origin = (origin, time_of_index)

    def rebase(self) -> None:
        self._fresh = []

    def time_of(self, index: int) -> float | None:
        return None if self._origin is None else self._crept() + index / self.rate

    def _crept(self) -> float:
        assert self._origin is not None
        origin, since = self._origin
        return origin + self.drift * max(0.0, self._latest - since)


def _abandon_portaudio(device: DeviceInfo) -> None:
    sd = portaudio()
    exit_handler = getattr(sd, "_exit_handler", None)
    if exit_handler is not None:
        atexit.unregister(exit_handler)
    log.warning(
        "left the dead stream of %s open: stopping it would hang PortAudio; "
        "sound devices cannot be used again in this process",
        device.describe(),
    )


def _resolve(device: DeviceInfo | str | int | None, kind: Kind) -> DeviceInfo:
    return device if isinstance(device, DeviceInfo) else find_device(device, kind)


def _callback_failed(owner: Microphone | Speaker, exc: Exception) -> None:
    owner.callback_errors += 1
    owner.last_callback_error = f"{type(exc).__name__}: {exc}"
    if owner.callback_errors == 1:
        log.error(
            "%s callback failed (counting further failures silently)",
            type(owner).__name__,
            exc_info=exc,
        )


class Microphone:
    """Calls `on_frame(frame, capture_time)` with float32 [frame_size] frames at `sample_rate`.

    `on_frame` runs on PortAudio's callback thread: hand the frame over and return (a bounded
    queue, `loop.call_soon_threadsafe`), never block. `capture_time` is on the `time.monotonic()`
    clock: when the frame's first sample reached the ADC, from the callback's
    `inputBufferAdcTime` relative to its `currentTime` (falling back to one block duration
    where the host API reports no times), ignoring the resampler's few milliseconds of delay.
    """

    def __init__(
        self,
        device: DeviceInfo | str | int | None,
        on_frame: FrameCallback,
        frame_size: int = 1920,
        sample_rate: int = 24000,
        *,
        channels: int | None = None,  # None: the device's, at most 2 (mixed to mono anyway)
        latency: float | str = "high",  # PortAudio's suggested latency: seconds, "low", "high"
        on_error: ErrorCallback | None = None,
    ) -> None:
        self.device = _resolve(device, "input")
        self.frame_size = frame_size
        self.sample_rate = sample_rate
        self.device_rate = self.device.default_sample_rate
        self.channels = channels or min(self.device.input_channels, 2)
        self.latency_setting = latency
        self._on_frame = on_frame
        self._resampler = StreamResampler(self.device_rate, sample_rate)
        self._reframer = Reframer(frame_size)
        self._clock = SampleClock(self.device_rate)
        self._life = _Lifecycle(self.device, "input", on_error)
        self.frame_count = 0  # frames handed to on_frame
        self.captured_samples = 0  # samples received from the device, at its rate
        self.xruns = 0  # callbacks flagged with input overflow or underflow
        self.callback_errors = 0
        self.last_callback_error: str | None = None

    @property
    def error(self) -> str | None:
        """Why the stream died (device gone); None while it runs or after a clean stop."""
        return self._life.error

    @property
    def latency(self) -> float | None:
        """PortAudio's input latency in seconds (None before `start`)."""
        return None if self._life.stream is None else float(self._life.stream.latency)

    def start(self) -> None:
        sd = portaudio()
        self._life.start(
            lambda finished: sd.InputStream(
                device=self.device.index,
                samplerate=self.device_rate,
                channels=self.channels,
                dtype="float32",
                latency=self.latency_setting,
                callback=self._callback,
                finished_callback=finished,
            )
        )

    def close(self) -> None:
        """Stop capturing and release the device; a closed Microphone cannot start again."""
        self._life.close()

    stop = close

    def __enter__(self) -> Microphone:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        try:
            now = time.monotonic()
            if status.input_overflow or status.input_underflow:
                self.xruns += 1
                self._clock.rebase()
            delay = time_info.currentTime - time_info.inputBufferAdcTime
            if not 0.0 < delay < 1.0:
                delay = frames / self.device_rate
            self._clock.observe(self.captured_samples, now - delay)
            block_start = self._clock.time_of(self.captured_samples) or now - delay
            self.captured_samples += frames
            pcm = self._resampler.process(to_mono(indata))  # to_mono copies PortAudio's buffer
            held = self._reframer.pending  # samples of the first frame from earlier blocks
            for i, frame in enumerate(self._reframer.push(pcm)):
                first_sample = i * self.frame_size - held  # index in pcm, <= 0 for the first
                self.frame_count += 1
                self._on_frame(frame, block_start + first_sample / self.sample_rate)
        except Exception as exc:  # never raise into PortAudio: count, keep, go on
            _callback_failed(self, exc)


class Speaker:
    """Plays 24 kHz frames written from any thread, through a pre-rolled jitter buffer.

    Frames are resampled to the device rate in `write` and buffered there (`jitter`, sized in
    device samples: one frame is `device_frame_size`); the callback copies them out, mono to every
    channel, and plays silence when there is nothing (see `audio_io.jitter` for the drop policy).
    """

    def __init__(
        self,
        device: DeviceInfo | str | int | None,
        frame_size: int = 1920,
        sample_rate: int = 24000,
        preroll_frames: int = 1,
        max_frames: int = 4,
        *,
        channels: int | None = None,  # None: the device's, at most 2 (each gets the mono signal)
        latency: float | str = "high",  # PortAudio's suggested latency: seconds, "low", "high"
        on_error: ErrorCallback | None = None,
    ) -> None:
        self.device = _resolve(device, "output")
        self.frame_size = frame_size
        self.sample_rate = sample_rate
        self.device_rate = self.device.default_sample_rate
        self.device_frame_size = round(frame_size * self.device_rate / sample_rate)
        self.channels = channels or min(self.device.output_channels, 2)
        self.latency_setting = latency
        self.jitter = JitterBuffer(self.device_frame_size, preroll_frames, max_frames)
        self._resampler = StreamResampler(sample_rate, self.device_rate)
        self._write_lock = threading.Lock()  # the resampler is stateful: one writer at a time
        self._life = _Lifecycle(self.device, "output", on_error)
        # when each sample handed to the device (written audio and silence alike, so that an
        # underrun's silence moves nothing) reaches the DAC
        self._clock = SampleClock(self.device_rate)
        self.xruns = 0  # callbacks flagged with output underflow or overflow
        self.callback_errors = 0
        self.last_callback_error: str | None = None

    @property
    def error(self) -> str | None:
        """Why the stream died (device gone); None while it runs or after a clean stop."""
        return self._life.error

    @property
    def latency(self) -> float | None:
        """PortAudio's output latency in seconds (None before `start`), jitter buffer excluded."""
        return None if self._life.stream is None else float(self._life.stream.latency)

    @property
    def buffered_seconds(self) -> float:
        return self.jitter.buffered_samples / self.device_rate

    @property
    def render_delay(self) -> float:
        """Seconds from now until audio written now will sound: from the DAC time PortAudio
        gave the callbacks (`SampleClock`), so it does not jump by a device period from one call
        to the next as the buffer level does; buffer level plus `latency` where there is none."""
        stats = self.jitter.stats()  # one snapshot: handed and buffered move together
        handed = stats.played_samples + stats.silence_samples
        sounds_at = self._clock.time_of(handed + stats.buffered_samples)
        if sounds_at is None:
            return stats.buffered_samples / self.device_rate + (self.latency or 0.0)
        return max(0.0, sounds_at - time.monotonic())

    @property
    def underruns(self) -> int:
        return self.jitter.underruns

    @property
    def overruns(self) -> int:
        return self.jitter.overruns

    @property
    def played_frames(self) -> int:
        """Whole frames of written audio handed to the device so far."""
        return self.jitter.played_samples // self.device_frame_size

    def write(self, frame: np.ndarray) -> None:
        """Queue float32 audio at `sample_rate` (normally one frame); never blocks for long."""
        with self._write_lock:
            self.jitter.write(self._resampler.process(frame))

    def start(self) -> None:
        sd = portaudio()
        self._life.start(
            lambda finished: sd.OutputStream(
                device=self.device.index,
                samplerate=self.device_rate,
                channels=self.channels,
                dtype="float32",
                latency=self.latency_setting,
                callback=self._callback,
                finished_callback=finished,
            )
        )

    def close(self) -> None:
        """Stop playing (what is buffered is dropped) and release the device; no restart."""
        self._life.close()

    stop = close

    def __enter__(self) -> Speaker:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _callback(self, outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        try:
            if status.output_underflow or status.output_overflow:
                self.xruns += 1
                self._clock.rebase()
            # samples handed to the device so far (only this thread moves them)
            before = self.jitter.played_samples + self.jitter.silence_samples
            outdata[:] = self.jitter.read(frames)[:, None]
            ahead = time_info.outputBufferDacTime - time_info.currentTime
            if 0.0 <= ahead < 1.0:
                self._clock.observe(before, time.monotonic() + ahead)
        except Exception as exc:  # never raise into PortAudio: play silence, count, go on
            outdata.fill(0.0)
            _callback_failed(self, exc)
