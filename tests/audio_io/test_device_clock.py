"""The Speaker's render time and the Microphone's capture time stay continuous through an
underrun and an xrun, with PortAudio's callbacks driven here on a simulated clock.

On the JACK echo loop the speaker's estimate jumped by 50 to 95 ms at underruns (its clock was
reset and fell back to buffer level plus reported latency for four callbacks), and the
microphone's did at xruns: the echo reference moved against the microphone, which the delay
tracker took for a move of the room (docs/echo.md). JACK runs both streams in one client, in
the same cycle, so a device sample count is the same clock for both; what the simulation checks
is that each stream's estimate is the time its samples truly reach the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest

import audio_io.streams
from audio_io.devices import DeviceInfo
from audio_io.streams import Microphone, SampleClock, Speaker

RATE, PERIOD = 24000, 1920  # one callback per 80 ms frame, as on the JACK loop
LATENCY = 0.16  # what PortAudio reports between the callback and the device
JACK = DeviceInfo(0, "system", "JACK Audio Connection Kit", 2, 2, RATE)


@dataclass
class Device:
    """A simulated device: callback k handles samples [k * PERIOD, (k + 1) * PERIOD), which reach
    the DAC (leave the ADC) LATENCY after (before) the cycle's start; an xrun skips cycles."""

    now: float = 100.0
    skipped: float = 0.0  # seconds of cycles skipped by xruns so far

    def dac_time(self, sample: int) -> float:
        return 100.0 + self.skipped + sample / RATE + LATENCY

    def adc_time(self, sample: int) -> float:
        return 100.0 + self.skipped + sample / RATE - LATENCY


@pytest.fixture
def device(monkeypatch: pytest.MonkeyPatch) -> Device:
    simulated = Device()
    monkeypatch.setattr(audio_io.streams.time, "monotonic", lambda: simulated.now)
    return simulated


def _status(xrun: bool) -> SimpleNamespace:
    return SimpleNamespace(
        output_underflow=xrun, output_overflow=False, input_overflow=xrun, input_underflow=False
    )


def _run(device: Device, speaker: Speaker, microphone: Microphone, cycles: int, **when) -> list:
    """`cycles` callbacks of both streams; returns, per cycle, (the error of the speaker's
    render time for audio written then, the error of the capture time of the frame captured),
    in seconds. `when`: cycles with an xrun (`xrun`), without a write before (`no_write`),
    or whose callbacks run late (`late`: {cycle: seconds})."""
    errors = []
    out = np.zeros((PERIOD, 1), np.float32)
    captured: list[float] = []
    microphone._on_frame = lambda pcm, t: captured.append(t)
    for k in range(cycles):
        xrun = k in when.get("xrun", ())
        if xrun:
            device.skipped += PERIOD / RATE  # the device ran a cycle without us
        start = 100.0 + device.skipped + k * PERIOD / RATE
        device.now = start + when.get("late", {}).get(k, 0.0)
        if k not in when.get("no_write", ()):
            speaker.write(np.full(PERIOD, 0.1, np.float32))
        times = SimpleNamespace(
            currentTime=device.now, outputBufferDacTime=device.now + LATENCY,
            inputBufferAdcTime=device.now - LATENCY,
        )  # fmt: skip
        speaker._callback(out, PERIOD, times, _status(xrun))
        microphone._callback(np.zeros((PERIOD, 1), np.float32), PERIOD, times, _status(xrun))
        stats = speaker.jitter.stats()
        handed = stats.played_samples + stats.silence_samples
        render_error = (
            device.now + speaker.render_delay - device.dac_time(handed + stats.buffered_samples)
        )
        capture_error = captured[-1] - device.adc_time(k * PERIOD)
        errors.append((render_error, capture_error))
    return errors


def test_the_render_time_goes_on_through_an_underrun(device: Device) -> None:
    speaker = Speaker(JACK, frame_size=PERIOD, sample_rate=RATE)
    microphone = Microphone(JACK, lambda pcm, t: None, frame_size=PERIOD, sample_rate=RATE)
    errors = _run(device, speaker, microphone, 20, no_write=(10,))
    assert speaker.underruns == 1
    # after the first callbacks (not used), exact: the underrun's silence was counted
    assert all(abs(render) < 1e-6 for render, _ in errors[5:])


def test_an_xrun_moves_both_clocks_once_by_what_it_skipped(device: Device) -> None:
    speaker = Speaker(JACK, frame_size=PERIOD, sample_rate=RATE)
    microphone = Microphone(JACK, lambda pcm, t: None, frame_size=PERIOD, sample_rate=RATE)
    late = {10: 0.03, 11: 0.02, 12: 0.01}  # the callbacks after a stall run late
    errors = _run(device, speaker, microphone, 24, xrun=(10,), late=late)
    assert speaker.xruns == microphone.xruns == 1
    render, capture = np.array(errors).T
    skipped = PERIOD / RATE
    # until four callbacks since the xrun are in, both still go by the clock they had: early by
    # the skipped cycle, both alike (the reference keeps its place against the microphone)...
    assert np.allclose(render[5:10], 0, atol=1e-6) and np.allclose(capture[5:10], 0, atol=1e-6)
    assert np.allclose(render[10:13], -skipped, atol=1e-3)  # (the kept origin creeps later)
    assert np.allclose(capture[10:13], -skipped, atol=1e-3)
    # ...then both step once, by exactly the skipped cycle, and are right again.
    assert np.allclose(render[13:], 0, atol=1e-6) and np.allclose(capture[13:], 0, atol=1e-6)


def test_a_rebased_clock_answers_from_the_old_origin_until_it_has_seen_enough() -> None:
    clock = SampleClock(RATE, drift=0.0, skip=2)
    for k in range(4):
        clock.observe(k * PERIOD, 10.0 + k * PERIOD / RATE + (0.02 if k == 2 else 0.0))
    assert clock.time_of(RATE) == pytest.approx(11.0)
    clock.rebase()
    clock.observe(4 * PERIOD, 10.5 + 4 * PERIOD / RATE)  # 0.5 s later: samples were skipped
    assert clock.time_of(RATE) == pytest.approx(11.0)  # one observation: not yet
    clock.observe(5 * PERIOD, 10.5 + 5 * PERIOD / RATE + 0.03)  # a late one
    assert clock.time_of(RATE) == pytest.approx(11.5)  # the earliest of the two
