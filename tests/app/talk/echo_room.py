"""A room on a real JACK server: what the app's speaker plays comes back into its microphone.

    with EchoRoom(server, EchoPath(delay=0.04, gain_db=-10)) as room:
        room.connect_portaudio()                 # our ports replace system:capture/playback
        room.change_path_at(position, EchoPath(0.11, -6))
        room.say(speech, at=position)            # the user, on top of the echo

Per JACK cycle the room takes the app's speaker output, delays it, filters it with a room
impulse response (synthesised: white noise under an exponential decay, a direct path first),
scales it, adds the user's scheduled speech, and feeds the sum to the app's microphone. It keeps
the echo and the user's speech it fed, sample for sample, so a test knows what every captured
sample was made of. Convolution is overlap-add with numpy's FFT, about a millisecond a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tests.jack_server import JackPeer, JackServer


@dataclass(frozen=True)
class EchoPath:
    delay: float  # seconds from the speaker's output to the start of the impulse response
    gain_db: float  # level of the echo relative to what was played (energy of the response)
    decay: float = 0.03  # seconds for the reverberation to fall by 1/e (RT60 about 7x this)
    length: float = 0.15  # seconds of impulse response
    seed: int = 0

    def impulse_response(self, sample_rate: int) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        t = np.arange(round(self.length * sample_rate)) / sample_rate
        reverb = rng.standard_normal(len(t)) * np.exp(-t / self.decay)
        reverb[0] += 3.0  # the direct path
        reverb /= np.sqrt(np.sum(reverb**2))
        delay = np.zeros(round(self.delay * sample_rate))
        return (np.concatenate([delay, reverb]) * 10 ** (self.gain_db / 20)).astype(np.float32)


class EchoRoom(JackPeer):
    def __init__(self, server: JackServer, path: EchoPath, record_seconds: float = 40.0) -> None:
        super().__init__(server, record_seconds)
        n = round(record_seconds * server.sample_rate)
        self.fed_echo = np.zeros(n, np.float32)  # the echo added to the microphone, per sample
        self.fed_user = np.zeros(n, np.float32)  # the user's speech added to it
        self.first_played: int | None = None  # position of the first audible speaker sample
        self._response = path.impulse_response(server.sample_rate)
        self._pending: tuple[int, np.ndarray] | None = None  # (position, new response)
        self._tail = np.zeros(0, np.float32)  # overlap-add carry into the next cycles
        self._speech: list[tuple[int, np.ndarray]] = []  # (position, user audio)

    def __enter__(self) -> EchoRoom:
        self.start()
        return self

    def change_path_at(self, position: int, path: EchoPath) -> None:
        self._pending = (position, path.impulse_response(self.server.sample_rate))

    def say(self, speech: np.ndarray, at: int) -> None:
        self._speech.append((at, np.asarray(speech, np.float32)))

    def _process(self, frames: int) -> None:  # JACK's process thread
        start = self.position
        played = self.playback[0].get_array().copy()
        if self.first_played is None and np.max(np.abs(played)) > 1e-3:
            self.first_played = start + int(np.argmax(np.abs(played) > 1e-3))
        if self._pending is not None and start >= self._pending[0]:
            self._response, self._pending = self._pending[1], None
        size = frames + len(self._response) - 1
        n = 1 << (size - 1).bit_length()
        echo = np.fft.irfft(np.fft.rfft(played, n) * np.fft.rfft(self._response, n), n)[:size]
        tail = np.zeros(max(size, len(self._tail)), np.float32)
        tail[:size] = echo
        tail[: len(self._tail)] += self._tail
        echo_now, self._tail = tail[:frames], tail[frames:]
        user = np.zeros(frames, np.float32)
        for at, speech in self._speech:
            lo, hi = max(at, start), min(at + len(speech), start + frames)
            if lo < hi:
                user[lo - start : hi - start] = speech[lo - at : hi - at]
        mic = echo_now + user
        for port in self.capture:
            port.get_array()[:] = mic
        end = min(start + frames, len(self.fed_echo))
        self.fed_echo[start:end] = echo_now[: end - start]
        self.fed_user[start:end] = user[: end - start]
        self._recording[start:end, 0] = played[: end - start]
        self.recorded_samples = end
        self.position += frames
