"""flite and festival: two more synthesizers, with word timings, beside espeak-ng.

Why more than one synthesizer: a model that has heard only espeak-ng's formant speech learns
espeak-ng, not speech. Debian's `flite` (CMU's clustergen and diphone voices) and `festival`
(diphone and HTS voices) render the same words with other ideas of a voice.

Word timings, as `app.train.espeak` gives them for espeak-ng (the inner monologue needs them):
- flite prints every phone with its end time (`-psdur`) but not the words; each word's phones
  come from flite itself (`-ps` on the word alone, cached), and the sentence's phones are dealt
  out to the words in order. Where the counts disagree (flite's post-lexical rules changed a
  word in context) the words are spread over the voiced time by their length instead.
- festival runs as one long-lived `festival --pipe` per process and writes each word's first
  and last segment times to a file, with a marker file when the utterance is done (festival's
  standard output is block-buffered on a pipe, so answers cannot be read from it).

Both are programs, not libraries: Debian `apt-get install flite festival festvox-kallpc16k
festvox-kdlpc16k festvox-us-slt-hts` (scripts/setup.sh --train installs them).
"""

from __future__ import annotations

import atexit
import functools
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import soundfile
import soxr

from .utterance import SAMPLE_RATE, SpeechError, Utterance, Voice, Word, finish_utterance

_PAUSE = "pau"


def _require(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        raise SpeechError(
            f"{program} is not installed (Debian: apt-get install flite festival "
            "festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts, or "
            "bash scripts/setup.sh --train)"
        )
    return path


def _read_wav(path: str | Path) -> np.ndarray:
    pcm, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    mono = pcm.mean(axis=1)
    return (
        soxr.resample(mono, rate, SAMPLE_RATE).astype(np.float32) if rate != SAMPLE_RATE else mono
    )


def _stretch(voice: Voice) -> float:
    """Voice.speed is words per minute as espeak-ng counts them; 165 is a normal pace."""
    return 165.0 / voice.speed


# --- flite -----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8192)
def _flite_phones(voice: str, word: str) -> int:
    """How many phones flite says for `word` alone."""
    out = subprocess.run(
        [_require("flite"), "-voice", voice, "-ps", "-t", word, "-o", "none"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sum(1 for phone in out.split() if phone != _PAUSE)


def flite(text: str, voice: Voice) -> Utterance:
    with tempfile.TemporaryDirectory(prefix="antiphon-flite-") as tmp:
        wav = Path(tmp) / "out.wav"
        result = subprocess.run(
            [
                _require("flite"),
                "-voice",
                voice.language,
                "--setf",
                f"duration_stretch={_stretch(voice):.3f}",
                "-psdur",
                "-t",
                text,
                "-o",
                str(wav),
            ],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0 or not wav.is_file():
            raise SpeechError(f"flite failed on {text!r} with voice {voice.language}: "
                              f"{result.stderr.strip()}")  # fmt: skip
        pcm = _read_wav(wav)
    segments = [
        (phone, float(end))
        for phone, end in (item.rsplit(":", 1) for item in result.stdout.split())
    ]
    tokens = text.split()
    counts = [_flite_phones(voice.language, _spoken(token)) for token in tokens]
    starts = _deal_phones(segments, counts)
    if starts is None:
        starts = _spread(tokens, segments)
    return finish_utterance(pcm, tokens, starts)


def _spoken(token: str) -> str:
    word = re.sub(r"[^\w']", "", token)
    return word or token


def _deal_phones(segments: list[tuple[str, float]], counts: list[int]) -> list[float] | None:
    """Word start times from the sentence's (phone, end) list, or None when they disagree."""
    voiced = [(i, phone) for i, (phone, _) in enumerate(segments) if phone != _PAUSE]
    if sum(counts) != len(voiced) or 0 in counts:
        return None
    starts, k = [], 0
    for count in counts:
        index = voiced[k][0]
        starts.append(segments[index - 1][1] if index > 0 else 0.0)
        k += count
    return starts


def _spread(tokens: list[str], segments: list[tuple[str, float]]) -> list[float]:
    """Word starts spread over the voiced span by the words' lengths (a fallback)."""
    voiced = [i for i, (phone, _) in enumerate(segments) if phone != _PAUSE]
    begin = segments[voiced[0] - 1][1] if voiced and voiced[0] > 0 else 0.0
    end = segments[voiced[-1]][1] if voiced else 0.0
    lengths = np.array([len(_spoken(t)) for t in tokens], dtype=float)
    offsets = np.concatenate([[0.0], np.cumsum(lengths)[:-1]]) / max(1.0, lengths.sum())
    return [begin + float(o) * (end - begin) for o in offsets]


# --- festival --------------------------------------------------------------------------------


class Festival:
    """One `festival --pipe` process, fed Scheme, answering through files."""

    def __init__(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="antiphon-festival-"))
        self._process = subprocess.Popen(
            [_require("festival"), "--pipe"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self._lock = threading.Lock()
        self._count = 0
        atexit.register(self.close)

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        if self._process.stdin is not None:
            self._process.stdin.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def synthesize(self, text: str, voice: Voice, timeout: float = 30.0) -> Utterance:
        quoted = text.replace("\\", " ").replace('"', " ")
        with self._lock:
            self._count += 1
            base = self._dir / f"u{self._count}"
            wav, words, done = (base.with_suffix(s) for s in (".wav", ".words", ".done"))
            script = f"""(voice_{voice.language})
(Parameter.set 'Duration_Stretch {_stretch(voice):.3f})
(set! utt (utt.synth (eval (list 'Utterance 'Text "{quoted}"))))
(utt.save.wave utt "{wav}" 'riff)
(set! fd (fopen "{words}" "w"))
(mapcar (lambda (w) (format fd "%s %f\\n" (item.name w)
  (item.feat w "R:SylStructure.daughter1.daughter1.segment_start")))
  (utt.relation.items utt 'Word))
(fclose fd)
(fclose (fopen "{done}" "w"))
"""
            if self._process.poll() is not None:
                raise SpeechError(
                    "festival exited (is the voice installed? see app.train.speech_cmu)"
                )
            self._process.stdin.write(script)  # type: ignore[union-attr]
            self._process.stdin.flush()  # type: ignore[union-attr]
            deadline = time.monotonic() + timeout
            while not done.exists():
                if self._process.poll() is not None or time.monotonic() > deadline:
                    raise SpeechError(
                        f"festival gave no answer for {text!r} with voice {voice.language} "
                        "(is the voice installed? Debian: festvox-kallpc16k, ...)"
                    )
                time.sleep(0.002)
            pcm = _read_wav(wav)
            rows = [line.split() for line in words.read_text().splitlines() if line.strip()]
            for path in (wav, words, done):
                path.unlink()
        # festival drops punctuation from its words: they line up with the text's tokens
        tokens = text.split()
        starts = [float(row[-1]) for row in rows]
        if len(starts) != len(tokens):  # it expanded something ("5" -> "five"): spread instead
            starts = _spread(tokens, [("x", 0.0), ("x", len(pcm) / SAMPLE_RATE)])
        return finish_utterance(pcm, tokens, starts)


_festival: Festival | None = None
_festival_lock = threading.Lock()


def festival(text: str, voice: Voice) -> Utterance:
    global _festival
    with _festival_lock:
        if _festival is None:
            _festival = Festival()
    return _festival.synthesize(text, voice)


__all__ = ["Festival", "festival", "flite", "Word"]
