"""Microphone and Speaker on a real JACK server (dummy backend), with a peer client as the world.

The peer plays speech into PortAudio's input ports; the Microphone's frames go straight into the
Speaker; the peer records what PortAudio plays. At 48 kHz both directions resample.
"""

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soxr

from audio_io.errors import AudioDeviceError
from audio_io.streams import Microphone, Speaker
from tests.jack_server import JackPeer, JackServer, jack_server, require_portaudio, require_tool

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def jack(request: pytest.FixtureRequest) -> Iterator[JackServer]:
    """24 kHz unless a test asks for (rate, period); pytest stops one before it starts another."""
    rate, period = getattr(request, "param", (24000, 1920))
    with jack_server(rate, period) as server:  # one JACK period = one 80 ms frame
        yield server


def best_match(haystack: np.ndarray, needle: np.ndarray) -> tuple[int, float]:
    """Offset of `needle` in `haystack` and the normalised correlation there."""
    scores = np.correlate(haystack, needle, mode="valid")
    offset = int(np.argmax(scores))
    window = haystack[offset : offset + len(needle)]
    return offset, float(scores[offset] / (np.linalg.norm(needle) * np.linalg.norm(window) + 1e-12))


@pytest.mark.parametrize(
    "jack", [(24000, 1920), (48000, 3840)], ids=["24kHz", "48kHz"], indirect=True
)
def test_loopback_delivers_every_frame_and_plays_what_was_written(
    jack: JackServer, speech: np.ndarray
) -> None:
    rate = jack.sample_rate
    played = soxr.resample(speech, 24000, rate) if rate != 24000 else speech
    frames: list[np.ndarray] = []
    capture_times: list[float] = []
    speaker = Speaker("system")

    def on_frame(frame: np.ndarray, capture_time: float) -> None:
        frames.append(frame)
        capture_times.append(capture_time)
        speaker.write(frame)

    # the speaker first: frames the microphone delivers before it runs would pile up
    with JackPeer(jack) as peer, speaker, Microphone("system", on_frame) as microphone:
        started_at = peer.position
        peer.connect_portaudio()
        connections = peer.portaudio_connections()
        time.sleep(0.2)
        peer.play(played)
        assert peer.wait_played(timeout=5)
        time.sleep(6 * jack.period_seconds)  # for its end to come back through the Speaker
        running = (speaker.underruns, speaker.overruns, peer.position - started_at)
        assert speaker.played_frames >= microphone.frame_count - 2  # what came in went out
        assert microphone.error is None and speaker.error is None

    assert connections == {
        "antiphon-peer:capture_1": ["PortAudio:in_0"],
        "antiphon-peer:capture_2": ["PortAudio:in_1"],
        "antiphon-peer:playback_1": ["PortAudio:out_0"],
        "antiphon-peer:playback_2": ["PortAudio:out_1"],
    }
    assert microphone.xruns == speaker.xruns == peer.xruns == 0
    assert microphone.callback_errors == speaker.callback_errors == 0
    assert running[:2] == (0, 0)  # no underrun or overrun while running

    # every frame arrived: as many as the captured samples make, each 1920 samples, 80 ms apart
    assert all(f.shape == (1920,) and f.dtype == np.float32 for f in frames)
    assert len(frames) == microphone.frame_count
    expected = microphone.captured_samples * 24000 // rate // 1920
    assert expected - 1 <= microphone.frame_count <= expected
    assert running[2] - jack.period <= microphone.captured_samples <= running[2] + 3 * jack.period
    assert np.diff(capture_times) == pytest.approx(0.08, abs=0.025)

    # the microphone heard the speech without a gap (bit-exact when nothing is resampled)
    heard = np.concatenate(frames)
    offset, correlation = best_match(heard, speech)
    assert correlation > 0.999
    if rate == 24000:
        np.testing.assert_array_equal(heard[offset : offset + len(speech)], speech)

    # the speaker played it, on both channels, a few periods later
    recorded = peer.recorded()
    np.testing.assert_array_equal(recorded[:, 0], recorded[:, 1])
    offset, correlation = best_match(recorded[:, 0], played)
    assert correlation > 0.999
    assert peer.play_started_at is not None
    latency = (offset - peer.play_started_at) / rate
    print(
        f"\n{rate} Hz: mic -> speaker loopback latency {latency * 1000:.0f} ms; PortAudio "
        f"reports input {microphone.latency} s, output {speaker.latency} s"
    )
    # 24 kHz: 2 periods (the peer <-> PortAudio graph loop, and one frame of pre-roll);
    # 48 kHz: 2 more, as the resamplers hold back a few ms and frames then wait a period
    assert latency == pytest.approx((2 if rate == 24000 else 4) * jack.period_seconds, abs=0.001)


def test_a_failing_on_frame_is_counted_and_capture_goes_on(jack: JackServer) -> None:
    delivered = threading.Event()

    def on_frame(frame: np.ndarray, capture_time: float) -> None:
        if delivered.is_set():
            raise RuntimeError("consumer is broken")
        delivered.set()

    with Microphone("system", on_frame) as microphone:
        assert delivered.wait(timeout=2)
        time.sleep(3 * jack.period_seconds)
    assert microphone.frame_count >= 3 and microphone.callback_errors == microphone.frame_count - 1
    assert microphone.last_callback_error == "RuntimeError: consumer is broken"
    assert microphone.error is None


def test_opening_with_impossible_settings_names_the_device(jack: JackServer) -> None:
    microphone = Microphone("system", lambda frame, t: None, channels=3)
    with pytest.raises(AudioDeviceError, match=r"cannot open input device \[\d+\] 'system'"):
        microphone.start()
    microphone.close()  # never started: nothing to do


def test_server_vanishing_is_reported_and_nothing_hangs() -> None:
    """jackd stops under a running Microphone and Speaker, in a child process (see its doc)."""
    require_tool("jackd", "jackd2")
    require_portaudio()
    child = subprocess.run(
        [sys.executable, "-m", "tests.audio_io.vanish_child"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert child.returncode == 0, child.stderr
    result = json.loads(child.stdout.strip().splitlines()[-1])
    # the abandoned PortAudio client leaves its semaphore behind
    for leftover in Path("/dev/shm").glob(f"jack_sem.*_{result['server']}_*"):
        leftover.unlink(missing_ok=True)
    assert result["reported"] and len(result["errors"]) == 2
    assert result["frames_before"] > 0
    assert result["microphone_error"].startswith("input device [0] 'system' (JACK")
    assert result["speaker_error"].startswith("output device [0] 'system' (JACK")
    assert "stopped unexpectedly" in result["speaker_error"]
    assert result["detected_after"] < 1.0 and result["close_seconds"] < 0.5
    assert "stopping it would hang PortAudio" in child.stderr
