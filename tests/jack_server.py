"""A real sound server for tests: a private JACK server with the dummy backend, and a peer client.

    jack_server = make_jack_fixture()           # in a conftest or test module: a pytest fixture

    def test_x(jack_server):                    # PortAudio now sees device "system" (JACK)
        with Microphone("system", on_frame) as mic, JackPeer(jack_server) as peer:
            peer.connect_portaudio()            # our ports replace system:capture/playback
            peer.play(speech)                   # goes into the microphone
            ...; peer.recorded()                # what PortAudio played, [N, channels]

Facts this relies on (jackd2 1.9.21, libportaudio2 19.6.0, Debian 12):

- The dummy backend runs on its own clock at any rate; `--no-realtime` needs no privileges and
  JACK_NO_AUDIO_RESERVATION=1 keeps it off D-Bus. Each server gets a unique name (`-n`) so runs
  in parallel do not clash; libjack, and so PortAudio, picks it from JACK_DEFAULT_SERVER.
- `jack_wait -w` polls once a second; polling `jack_wait -c` (its exit status is always 0, so its
  output is read) every 20 ms finds the server ready in about 0.3 s instead of 1.1 s.
- PortAudio reads the device list when it is initialised: after the server is up,
  `sounddevice._terminate(); sounddevice._initialize()` makes it see the JACK host API with one
  device, "system". Its streams register ports on one client named "PortAudio" (`in_N`, `out_N`,
  N counting up over every stream opened since PortAudio was initialised) and connect them to
  system:capture_N / system:playback_N when they start.
- `sounddevice._terminate()` must run BEFORE jackd stops, else the process aborts at exit; and a
  PortAudio stream whose server vanished can never be stopped (see audio_io/streams.py), so tests
  that kill the server do it in a subprocess.
- In CI (CI=true) a missing jackd fails the test; elsewhere it skips.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest

START_TIMEOUT = 5.0  # seconds for jackd to accept clients
_names = itertools.count()


@dataclass
class JackServer:
    name: str
    sample_rate: int
    period: int  # samples per JACK cycle
    channels: int  # system:capture_N and system:playback_N ports
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def period_seconds(self) -> float:
        return self.period / self.sample_rate

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log_path.unlink(missing_ok=True)


def require_tool(name: str, package: str) -> str:
    """The tool's path; a missing tool skips the test, or fails it in CI (CI=true)."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} not found: install Debian's {package} (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def require_portaudio() -> Any:
    try:
        import sounddevice
    except OSError as exc:  # libportaudio2 missing
        message = f"PortAudio cannot be loaded ({exc}): install Debian's libportaudio2"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return sounddevice


def start_jackd(sample_rate: int = 24000, period: int = 1920, channels: int = 2) -> JackServer:
    """A private JACK dummy server, accepting clients; `server.stop()` ends it."""
    jackd = require_tool("jackd", "jackd2")
    require_tool("jack_wait", "jackd2")
    name = f"antiphon-test-{os.getpid()}-{next(_names)}"
    log_path = Path(tempfile.gettempdir()) / f"{name}.log"
    command = [jackd, "-n", name, "--no-realtime", "-d", "dummy", "--rate", str(sample_rate)]
    command += ["--period", str(period), "--capture", str(channels), "--playback", str(channels)]
    env = {**os.environ, "JACK_NO_AUDIO_RESERVATION": "1"}
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file
        )
    server = JackServer(name, sample_rate, period, channels, process, log_path)
    try:
        _wait_until_running(server)
    except BaseException:
        server.stop()
        raise
    return server


def point_portaudio_at(server: JackServer) -> None:
    """Make libjack (and so PortAudio) use this server, and re-initialise PortAudio to see it."""
    sd = require_portaudio()
    os.environ["JACK_DEFAULT_SERVER"] = server.name
    os.environ["JACK_NO_START_SERVER"] = "1"  # never let libjack start a server of its own
    sd._terminate()
    sd._initialize()


@contextmanager
def jack_server(
    sample_rate: int = 24000, period: int = 1920, channels: int = 2
) -> Iterator[JackServer]:
    """A private JACK dummy server, with PortAudio re-initialised to see it while it runs."""
    sd = require_portaudio()
    server = start_jackd(sample_rate, period, channels)
    previous = {key: os.environ.get(key) for key in ("JACK_DEFAULT_SERVER", "JACK_NO_START_SERVER")}
    try:
        point_portaudio_at(server)
        yield server
    finally:
        sd._terminate()  # before jackd stops, or the process aborts at exit
        _restore(previous)
        sd._initialize()
        server.stop()


def make_jack_fixture(
    name: str = "jack_server",
    scope: Literal["session", "package", "module", "class", "function"] = "module",
    sample_rate: int = 24000,
    period: int = 1920,
    channels: int = 2,
) -> Any:
    """A pytest fixture (assign it to a module-level name) yielding a running JackServer."""

    @pytest.fixture(name=name, scope=scope)
    def fixture() -> Iterator[JackServer]:
        with jack_server(sample_rate, period, channels) as server:
            yield server

    return fixture


class JackPeer:
    """A second JACK client standing in for the outside world.

    Its `capture_N` outputs feed PortAudio's inputs (what a microphone hears) and its `playback_N`
    inputs take PortAudio's outputs (what a speaker plays), once `connect_portaudio()` has moved
    PortAudio's connections from the system ports to ours. Positions count samples since
    `start()`, on the JACK clock.
    """

    def __init__(self, server: JackServer, record_seconds: float = 10.0) -> None:
        import jack  # JACK-Client, a test-only dependency

        self.server = server
        self.client = jack.Client("antiphon-peer", no_start_server=True, servername=server.name)
        self.capture = [self.client.outports.register(f"capture_{i + 1}") for i in range(2)]
        self.playback = [self.client.inports.register(f"playback_{i + 1}") for i in range(2)]
        self._recording = np.zeros((round(record_seconds * server.sample_rate), 2), np.float32)
        self.position = 0  # samples processed since start
        self.recorded_samples = 0
        self.xruns = 0
        self.play_started_at: int | None = None  # position of the first sample of `play`
        self._signal: np.ndarray | None = None
        self._signal_position = 0
        self._played = threading.Event()
        self.client.set_process_callback(self._process)
        self.client.set_xrun_callback(self._xrun)

    def start(self) -> JackPeer:
        self.client.activate()
        return self

    def close(self) -> None:
        self.client.deactivate()
        self.client.close()

    def __enter__(self) -> JackPeer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def connect_portaudio(self) -> None:
        """Move every connection of system:capture_N / system:playback_N onto our ports."""
        for i, ours in enumerate(self.capture):
            system = f"system:capture_{i + 1}"
            for port in self.client.get_all_connections(system):
                self.client.disconnect(system, port)
                self.client.connect(ours, port)
        for i, ours in enumerate(self.playback):
            system = f"system:playback_{i + 1}"
            for port in self.client.get_all_connections(system):
                self.client.disconnect(port, system)
                self.client.connect(port, ours)

    def portaudio_opened(self) -> bool:
        """Whether a PortAudio client has connected to the system capture and playback ports."""
        return bool(self.client.get_all_connections("system:capture_1")) and bool(
            self.client.get_all_connections("system:playback_1")
        )

    def portaudio_connections(self) -> dict[str, list[str]]:
        """Our ports and the PortAudio ports now connected to them (for messages and checks)."""
        return {
            port.name: [p.name for p in self.client.get_all_connections(port)]
            for port in self.capture + self.playback
        }

    def play(self, signal: np.ndarray) -> None:
        """Play mono float32 `signal` on every capture port from the next cycle on."""
        self._played.clear()
        self._signal_position = 0
        self.play_started_at = None
        self._signal = np.asarray(signal, dtype=np.float32)

    def wait_played(self, timeout: float) -> bool:
        return self._played.wait(timeout)

    def wait_for(self, condition: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def recorded(self) -> np.ndarray:
        """Everything PortAudio played since start: float32 [N, 2] (N <= record_seconds)."""
        return self._recording[: self.recorded_samples].copy()

    def _process(self, frames: int) -> None:  # JACK's process thread
        outputs = [port.get_array() for port in self.capture]
        for out in outputs:
            out.fill(0.0)
        signal = self._signal
        if signal is not None and self._signal_position < len(signal):
            if self.play_started_at is None:
                self.play_started_at = self.position
            chunk = signal[self._signal_position : self._signal_position + frames]
            for out in outputs:
                out[: len(chunk)] = chunk
            self._signal_position += len(chunk)
            if self._signal_position >= len(signal):
                self._played.set()
        start = self.recorded_samples
        count = min(frames, len(self._recording) - start)
        for channel, port in enumerate(self.playback):
            self._recording[start : start + count, channel] = port.get_array()[:count]
        self.recorded_samples += count
        self.position += frames

    def _xrun(self, delay_usecs: float) -> None:
        self.xruns += 1


def _wait_until_running(server: JackServer) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"jackd exited with {server.process.returncode}:\n{server.log()}")
        check = subprocess.run(
            ["jack_wait", "-s", server.name, "-c"], capture_output=True, text=True, timeout=5
        )
        if check.stdout.strip() == "running":
            return
        time.sleep(0.02)
    pytest.fail(f"jackd did not start within {START_TIMEOUT} s:\n{server.log()}")


def _restore(previous: dict[str, str | None]) -> None:
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
