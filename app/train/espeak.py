"""espeak-ng with word timings: its library, driven through ctypes.

Why the library and not the `espeak-ng` command: the library reports a WORD event with the
sample position at which each word starts, inside one naturally phrased utterance. The command
line has no such output (`--pho` needs mbrola; `-x` gives phonemes without times), and
synthesising word by word to time the words gives a list of isolated words, each with its own
final intonation and pauses: not the speech the model should learn to produce.

Measured on this kind of machine: word events fall within about 40 ms of the energy onset of
the word (20 ms analysis frames), well inside one 80 ms codec frame.

The library keeps global state, so one process has one synthesiser behind a lock. The library's
location can be overridden with ANTIPHON_ESPEAK_LIBRARY and its data with ESPEAK_DATA_PATH
(used on machines without Debian's espeak-ng package).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading

import numpy as np
import soxr

from .utterance import SAMPLE_RATE, SpeechError, Utterance, Voice, finish_utterance

# speak_lib.h
_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_RATE, _VOLUME, _PITCH, _RANGE, _WORDGAP = 1, 2, 3, 4, 7


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),  # 1-based character offset of the word
        ("length", ctypes.c_int),  # characters in the word
        ("audio_position", ctypes.c_int),  # ms
        ("sample", ctypes.c_int),  # sample index at the library's rate
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),
    ]


_Callback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


class Espeak:
    """The espeak-ng library of this process (use `synthesizer()`)."""

    def __init__(self) -> None:
        path = os.environ.get("ANTIPHON_ESPEAK_LIBRARY") or ctypes.util.find_library("espeak-ng")
        try:
            self._lib = ctypes.CDLL(path or "libespeak-ng.so.1")
        except OSError as exc:
            raise SpeechError(
                "the espeak-ng library is not installed (Debian: apt-get install espeak-ng), "
                f"or set ANTIPHON_ESPEAK_LIBRARY to libespeak-ng.so.1: {exc}"
            ) from exc
        data = os.environ.get("ESPEAK_DATA_PATH")
        rate = self._lib.espeak_Initialize(
            _OUTPUT_SYNCHRONOUS, 0, data.encode() if data else None, _INITIALIZE_DONT_EXIT
        )
        if rate <= 0:
            raise SpeechError(f"espeak-ng did not start (data path {data or 'default'})")
        self.rate = int(rate)
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, int]] = []  # (text_position, sample)
        self._callback = _Callback(self._collect)  # kept referenced: the library holds it
        self._lib.espeak_SetSynthCallback(self._callback)
        self._lock = threading.Lock()

    def _collect(self, wav, count: int, events) -> int:
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            if events[i].type == _EVENT_WORD:
                self._events.append((events[i].text_position, events[i].sample))
            i += 1
        return 0

    def synthesize(self, text: str, voice: Voice) -> Utterance:
        """Speak `text` (plain text, UTF-8) and time each of its whitespace-separated words."""
        encoded = text.encode("utf-8")
        with self._lock:
            self._chunks, self._events = [], []
            if self._lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
                raise SpeechError(f"espeak-ng has no voice {voice.name!r}")
            for parameter, value in (
                (_RATE, voice.speed),
                (_PITCH, voice.pitch),
                (_RANGE, voice.pitch_range),
                (_VOLUME, 100),
                (_WORDGAP, 0),
            ):
                self._lib.espeak_SetParameter(parameter, value, 0)
            buffer = ctypes.create_string_buffer(encoded)
            status = self._lib.espeak_Synth(
                buffer, len(encoded) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
            )
            if status != 0:
                raise SpeechError(f"espeak-ng failed ({status}) on {text!r}")
            self._lib.espeak_Synchronize()
            chunks, events = self._chunks, self._events
        raw = np.concatenate(chunks).astype(np.float32) / 32768.0 if chunks else np.zeros(0)
        pcm = soxr.resample(raw, self.rate, SAMPLE_RATE).astype(np.float32)
        starts = [sample / self.rate for _, sample in events]
        return finish_utterance(
            pcm, text.split(), _word_starts(text, [p for p, _ in events], starts)
        )


def _word_starts(text: str, positions: list[int], starts: list[float]) -> list[float]:
    """Match WORD events (1-based character positions) to the whitespace words of `text`."""
    spans, offset = [], 0
    for token in text.split():
        begin = text.index(token, offset)
        offset = begin + len(token)
        spans.append((token, begin, offset))
    times: list[float | None] = [None] * len(spans)
    for position, start in zip(positions, starts, strict=True):
        for i, (_, begin, end) in enumerate(spans):
            if begin <= position - 1 < end and times[i] is None:
                times[i] = start
                break
    # A word without its own event (rare: espeak merged it) starts with its predecessor.
    filled: list[float] = []
    for t in times:
        filled.append(t if t is not None else (filled[-1] if filled else 0.0))
    return filled


_instance: Espeak | None = None
_instance_lock = threading.Lock()


def synthesizer() -> Espeak:
    """This process's espeak-ng (started on first use)."""
    global _instance
    with _instance_lock:
        if _instance is None:
            _instance = Espeak()
        return _instance
