"""`antiphon talk --record` end to end on a real JACK server (dummy backend, 24 kHz).

A second JACK client (the test) speaks an espeak-ng utterance into the app's microphone port
and records what the app plays. The app runs as users run it: the CLI in its own process,
stopped with SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile

from tests.jack_server import JackPeer, JackServer, make_jack_fixture

jack_server = make_jack_fixture()
ROOT = Path(__file__).resolve().parents[3]


def _lag(reference: np.ndarray, signal: np.ndarray) -> tuple[int, float]:
    """Where `reference` best appears in `signal`: (lag in samples, normalised correlation)."""
    n = len(signal) + len(reference)
    spectrum = np.fft.rfft(signal, n) * np.conj(np.fft.rfft(reference, n))
    correlation = np.fft.irfft(spectrum, n)[: len(signal) - len(reference) + 1]
    lag = int(np.argmax(correlation))
    window = signal[lag : lag + len(reference)]
    score = correlation[lag] / (np.linalg.norm(reference) * np.linalg.norm(window) + 1e-12)
    return lag, float(score)


def test_talk_records_every_frame_and_plays_the_reply(
    jack_server: JackServer,
    speech: np.ndarray,
    tmp_path: Path,
) -> None:
    record = tmp_path / "session"
    env = {**os.environ, "JACK_DEFAULT_SERVER": jack_server.name, "PYTHONUNBUFFERED": "1"}
    command = [
        sys.executable,
        "-m",
        "app.cli",
        "talk",
        "--input-device",
        "system",
        "--output-device",
        "system",
        "--record",
        str(record),
        "--record-microphone",
    ]
    with JackPeer(jack_server, record_seconds=30.0) as peer:
        app = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            assert peer.wait_for(peer.portaudio_opened, timeout=60), (
                "the app never opened its sound devices"
            )
            time.sleep(0.5)  # both streams running
            peer.connect_portaudio()
            silence = np.zeros(int(0.5 * 24000), np.float32)
            peer.play(np.concatenate([silence, speech, silence]))
            assert peer.wait_played(timeout=20)
            time.sleep(1.0)
        finally:
            app.send_signal(signal.SIGTERM)
            out, err = app.communicate(timeout=30)
    assert app.returncode == 0, err

    meta = json.loads((record / "meta.json").read_text())
    summary = meta["summary"]
    audio, rate = soundfile.read(record / "session.wav", dtype="float32")
    assert rate == 24000 and audio.shape[1] == 2
    frames = len(audio) // 1920
    # frames the model never processed would be silence in it: the recording keeps time
    assert summary["frames"] + meta["silent_frames"] == frames == meta["frames"]
    assert summary["dropped_input"] == 0  # every captured frame was processed
    assert frames * 0.08 > len(speech) / 24000 + 1.0

    # The raw microphone holds the utterance as the JACK peer spoke it; the user channel is what
    # the model heard after echo cancellation (on by default): the same speech, its level kept
    # (AEC3's band filters move the phase, so the waveform no longer matches sample for sample).
    microphone, _ = soundfile.read(record / "microphone.wav", dtype="float32")
    assert len(microphone) == len(audio)
    user_lag, user_score = _lag(speech, microphone)
    assert user_score > 0.95
    spoken = slice(user_lag, user_lag + len(speech))
    heard_db = 10 * np.log10(np.mean(audio[spoken, 1] ** 2) / np.mean(microphone[spoken] ** 2))
    assert abs(heard_db) < 3.0, heard_db
    assert meta["devices"]["echo"] == "WebRTC AEC3"
    # What the app played is the assistant channel of the recording, delayed by the output path.
    played = peer.recorded()[:, 0]
    assistant = audio[:, 0]
    segment = assistant[-24000 * 2 : -24000]  # a second of reply well inside the session
    out_lag, out_score = _lag(segment, played)
    assert out_score > 0.95, "the speaker did not play what the model produced"
    events = [json.loads(line) for line in (record / "events.jsonl").read_text().splitlines()]
    stats = [e for e in events if e["type"] == "frame"]
    assert len(stats) == frames
    latency = np.median([e["latency_ms"] for e in stats])
    print(
        f"frames {frames}, latency median {latency:.0f} ms, user score {user_score:.3f}, "
        f"speaker score {out_score:.3f}"
    )
    assert 0 < latency < 500, latency
    assert "Ctrl-C" in err
