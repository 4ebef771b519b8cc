"""Synthetic two-channel dialogues that teach full-duplex behaviour, and their aligned text.

A dialogue is a few exchanges between a user (a random espeak-ng voice) and the assistant (one
fixed voice), laid out on one clock the way a real recording is, with the behaviours the model
must learn:

- "answer": the user asks; the assistant is silent while the user speaks and answers 0.2-0.6 s
  after the user's end of speech;
- "pause": the user stops mid-sentence for 0.5-1.5 s ("what is seven plus ... five?"); the
  assistant waits for the end of the sentence;
- "interrupt": the user speaks over a long answer ("stop", or a new question); the assistant
  goes quiet 0.15-0.4 s after the user starts, and answers the new question if there is one.

Files, per dialogue: `NAME.flac`, stereo 24 kHz 16-bit, left = assistant, right = user (the
recording layout; FLAC is a third of WAV's size here, and folders of earlier antiphons hold
`NAME.wav`, read the same), and `NAME.json` with the words of both speakers and their times in
moshi-finetune's layout (`alignments`: [word, [start, end], speaker]) plus every turn's request,
expected answers and times (what `app.train.quality` scores). `manifest.jsonl` lists the files.

The words become the LM's text streams in `app.train.monologue`.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import multiprocessing.connection
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import soundfile
from tqdm import tqdm

from app.core.files import write_atomically
from model.errors import ConfigError

from . import content
from .content import Split, Turn
from .speech import SAMPLE_RATE, SpeechError, Utterance, speak

log = logging.getLogger(__name__)

ASSISTANT, USER = "SPEAKER_MAIN", "SPEAKER_USER"  # moshi-finetune's speaker names
_SPLIT_STREAM = {"train": 0, "eval": 1}  # keeps the two splits' random streams apart
# What a seed makes: raise it with any change to the content, voices or augmentation, so that
# a folder is never grown with dialogues of another kind (files without it are version 1).
GENERATOR_VERSION = 2  # 2: the high-pass on a third of the user channels
_ASSISTANT_RMS = 0.08  # about -22 dBFS
_FADE = int(0.02 * SAMPLE_RATE)  # an interrupted answer fades out over 20 ms


@dataclass
class TurnRecord:
    """One exchange as it happened on the dialogue's clock (seconds)."""

    kind: str  # "answer", "pause", "interrupt" (this answer gets cut), "stop" (no answer)
    turn: Turn
    user_start: float
    user_end: float
    pause: tuple[float, float] | None = None  # the user's mid-sentence silence
    assistant_start: float | None = None  # None: the assistant is not meant to answer
    assistant_end: float | None = None
    interrupted_at: float | None = None  # the user's first word over this answer


@dataclass
class Dialogue:
    assistant: np.ndarray  # float32 [samples]
    user: np.ndarray  # float32 [samples]
    words: list[tuple[str, float, float, str]]  # (word, start, end, speaker), by start time
    turns: list[TurnRecord]
    meta: dict = field(default_factory=dict)

    @property
    def duration(self) -> float:
        return len(self.assistant) / SAMPLE_RATE

    def to_json(self) -> dict:
        return {
            "duration": self.duration,
            "sample_rate": SAMPLE_RATE,
            "alignments": [[w, [round(s, 3), round(e, 3)], who] for w, s, e, who in self.words],
            "turns": [asdict(t) for t in self.turns],
            **self.meta,
        }


class _Timeline:
    """Utterances placed on the two channels, with the words they say."""

    def __init__(self) -> None:
        self.clips: dict[str, list[tuple[float, np.ndarray]]] = {ASSISTANT: [], USER: []}
        self.words: list[tuple[str, float, float, str]] = []

    def place(
        self, who: str, utterance: Utterance, start: float, cut: float | None = None
    ) -> float:
        """Put an utterance at `start`; `cut` ends it early (with a fade). Returns its end."""
        pcm = utterance.pcm
        if cut is not None and cut < start + utterance.duration:
            keep = max(0, int((cut - start) * SAMPLE_RATE))
            pcm = pcm[:keep].copy()
            fade = min(_FADE, len(pcm))
            pcm[len(pcm) - fade :] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
        end = start + len(pcm) / SAMPLE_RATE
        self.clips[who].append((start, pcm))
        for word in utterance.words:
            if start + word.start < end:
                self.words.append((word.text, start + word.start, min(start + word.end, end), who))
        return end

    def render(self, duration: float, who: str) -> np.ndarray:
        out = np.zeros(int(round(duration * SAMPLE_RATE)), dtype=np.float32)
        for start, pcm in self.clips[who]:
            a = int(round(start * SAMPLE_RATE))
            n = min(len(pcm), len(out) - a)
            out[a : a + n] += pcm[:n]
        return out


def _level(utterance: Utterance, rms: float) -> Utterance:
    current = float(np.sqrt(np.mean(utterance.pcm**2))) if len(utterance.pcm) else 0.0
    gain = rms / current if current > 0 else 1.0
    return Utterance((utterance.pcm * gain).astype(np.float32), utterance.words)


def _assistant_speech(text: str) -> Utterance:
    """The assistant's voice says the same text the same way every time: cached."""
    if text not in _assistant_cache:
        _assistant_cache[text] = speak(text, content.ASSISTANT_VOICE)
    return _assistant_cache[text]


_assistant_cache: dict[str, Utterance] = {}


def _band_limit(pcm: np.ndarray, low: float, high: float) -> np.ndarray:
    """A laptop microphone's band: smooth (raised-cosine, one octave) roll-offs below `low`
    and above `high` Hz, applied in the frequency domain."""
    size = 1 << int(np.ceil(np.log2(max(2, len(pcm)))))  # a fast FFT length
    spectrum = np.fft.rfft(pcm, size)
    f = np.fft.rfftfreq(size, 1 / SAMPLE_RATE)
    with np.errstate(divide="ignore"):
        octaves_below = np.log2(np.maximum(f, 1.0) / low)
        octaves_above = np.log2(np.maximum(f, 1.0) / high)
    gain = np.clip(0.5 + 0.5 * np.cos(np.pi * np.clip(-octaves_below, 0, 1)), 0, 1)
    gain *= np.clip(0.5 + 0.5 * np.cos(np.pi * np.clip(octaves_above, 0, 1)), 0, 1)
    gain[-octaves_below >= 1] = 0.0
    gain[octaves_above >= 1] = 0.0
    return np.fft.irfft(spectrum * gain, size)[: len(pcm)].astype(np.float32)


def _high_pass(pcm: np.ndarray, cutoff: float, order: int) -> np.ndarray:
    """A causal Butterworth high-pass (`order` even; -3 dB at `cutoff` Hz), as in a microphone's
    front end or an echo canceller's input (WebRTC's takes ~7 dB off 100 Hz and delays it by
    ~9 ms). Unlike `_band_limit` it shifts the phase of what it keeps: the codes of a voice
    through it differ from the codes of the voice. The cascade of RBJ biquads' frequency
    response is applied by FFT, padded so that the filter's tail does not wrap around."""
    pad = SAMPLE_RATE // 2  # the tail decays within 0.1 s at 40 Hz
    size = 1 << int(np.ceil(np.log2(len(pcm) + pad)))
    z = np.exp(-1j * np.pi * np.fft.rfftfreq(size, 0.5))  # e^{-jw} on the unit circle
    w0 = 2 * np.pi * cutoff / SAMPLE_RATE
    response = np.ones_like(z)
    for k in range(order // 2):
        q = 1 / (2 * np.cos(np.pi * (2 * k + 1) / (2 * order)))  # the Butterworth pole pairs
        alpha = np.sin(w0) / (2 * q)
        b = (1 + np.cos(w0)) / 2 * np.array([1.0, -2.0, 1.0])
        a = np.array([1 + alpha, -2 * np.cos(w0), 1 - alpha])
        response *= (b[0] + b[1] * z + b[2] * z**2) / (a[0] + a[1] * z + a[2] * z**2)
    return np.fft.irfft(np.fft.rfft(pcm, size) * response, size)[: len(pcm)].astype(np.float32)


def _reverb(pcm: np.ndarray, rt60: float, wet: float, rng: np.random.Generator) -> np.ndarray:
    """A room: the direct sound plus an exponentially decaying noise tail (RT60 seconds),
    `wet` its energy relative to the direct sound."""
    n = int(rt60 * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    tail = rng.standard_normal(n) * 10 ** (-3 * t / rt60)  # -60 dB at rt60
    tail[: int(0.003 * SAMPLE_RATE)] = 0.0  # the first reflections arrive a few ms late
    tail *= np.sqrt(wet / max(1e-12, float(np.sum(tail**2))))
    response = np.concatenate([[1.0], tail[1:]])
    size = 1 << int(np.ceil(np.log2(len(pcm) + n)))
    out = np.fft.irfft(np.fft.rfft(pcm, size) * np.fft.rfft(response, size), size)
    return out[: len(pcm)].astype(np.float32)


def augment_user(pcm: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """What a microphone hears of the user: a room, a band-limited microphone, noise, a
    high-pass.

    Each effect is drawn per dialogue (a room half of the time, a laptop band a third of the
    time, a noise floor always, hum or broadband noise sometimes, a phase-shifting high-pass a
    third of the time), so the model learns speech
    and not one synthesizer's clean output. Returns the signal and what was done to it."""
    done: dict = {}
    out = pcm
    if rng.random() < 0.5:
        rt60, wet = float(rng.uniform(0.15, 0.7)), float(rng.uniform(0.05, 0.6))
        out = _reverb(out, rt60, wet, rng)
        done["reverb"] = {"rt60": round(rt60, 3), "wet": round(wet, 3)}
    if rng.random() < 0.33:
        low, high = float(rng.uniform(100, 350)), float(rng.uniform(3400, 8000))
        out = _band_limit(out, low, high)
        done["band"] = [round(low), round(high)]
    noise_db = float(rng.uniform(-70, -45))
    noise = rng.standard_normal(len(out)) * 10 ** (noise_db / 20)
    done["noise_dbfs"] = round(noise_db, 1)
    if rng.random() < 0.25:
        extra_db = float(rng.uniform(-55, -38))
        if rng.random() < 0.5:  # mains hum and its harmonics
            t = np.arange(len(out)) / SAMPLE_RATE
            f0 = float(rng.choice([50.0, 60.0]))
            hum = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.3)) / k for k in (1, 2, 3))
            noise = noise + hum / np.sqrt(np.mean(hum**2)) * 10 ** (extra_db / 20)
            done["hum"] = {"hz": f0, "dbfs": round(extra_db, 1)}
        else:  # a fan: noise with less top end
            fan = _band_limit(rng.standard_normal(len(out)).astype(np.float32), 60, 2000)
            noise = noise + fan / np.sqrt(np.mean(fan**2) + 1e-12) * 10 ** (extra_db / 20)
            done["fan_dbfs"] = round(extra_db, 1)
    out = out + noise.astype(np.float32)
    if rng.random() < 0.33:  # a front end's (or an echo canceller's) high-pass, noise and all
        cutoff, order = float(rng.uniform(60, 200)), int(rng.choice([2, 4]))
        out = _high_pass(out, cutoff, order)
        done["high_pass"] = {"hz": round(cutoff), "order": order}
    return np.clip(out, -1.0, 1.0).astype(np.float32), done


def make_dialogue(rng: np.random.Generator, split: Split) -> Dialogue:
    """One random dialogue of 1-4 exchanges."""
    voice = content.user_voice(rng, split)
    user_rms = float(10 ** (rng.uniform(-30, -16) / 20))
    timeline = _Timeline()
    turns: list[TurnRecord] = []

    def user_says(text: str, start: float) -> float:
        return timeline.place(USER, _level(speak(text, voice), user_rms), start)

    def assistant_says(text: str, start: float, cut: float | None = None) -> float:
        utterance = _level(_assistant_speech(text), _ASSISTANT_RMS)
        return timeline.place(ASSISTANT, utterance, start, cut)

    def reaction() -> float:
        return float(rng.uniform(0.2, 0.6))

    t = float(rng.uniform(0.3, 1.2))
    for _ in range(int(rng.choice([1, 2, 3, 4], p=[0.25, 0.35, 0.25, 0.15]))):
        kind = str(rng.choice(["answer", "pause", "interrupt"], p=[0.55, 0.2, 0.25]))
        if kind == "interrupt":
            turn = content.long_request(rng, split)
            user_end = user_says(turn.question, t)
            start = user_end + reaction()
            full = _assistant_speech(turn.answer).duration
            interrupt = start + float(rng.uniform(0.8, max(0.9, 0.7 * full)))
            stop = interrupt + float(rng.uniform(0.15, 0.4))
            end = assistant_says(turn.answer, start, cut=stop)
            turns.append(TurnRecord("interrupt", turn, t, user_end, None, start, end, interrupt))
            if rng.random() < 0.6:  # "stop": nothing to answer
                text = content.stop_request(rng, split)
                user_end = user_says(text, interrupt)
                stop_turn = Turn("stop", text, "", (), (), ())
                turns.append(TurnRecord("stop", stop_turn, interrupt, user_end))
                t = user_end + float(rng.uniform(0.5, 1.5))
                continue
            turn = content.request(rng, split)
            user_end = user_says(turn.question, interrupt)
            start = user_end + reaction()
            end = assistant_says(turn.answer, start)
            turns.append(TurnRecord("answer", turn, interrupt, user_end, None, start, end))
        else:
            turn = content.request(rng, split)
            said = turn.question.split()
            pause = None
            if kind == "pause" and len(said) >= 3:
                k = int(rng.integers(1, len(said) - 1))
                first = " ".join(said[:k]).rstrip(".,?!") + ","
                pause_start = user_says(first, t)
                pause_end = pause_start + float(rng.uniform(0.5, 1.5))
                pause = (pause_start, pause_end)
                user_end = user_says(" ".join(said[k:]), pause_end)
            else:
                kind = "answer"
                user_end = user_says(turn.question, t)
            start = user_end + reaction()
            end = assistant_says(turn.answer, start)
            turns.append(TurnRecord(kind, turn, t, user_end, pause, start, end))
        t = end + float(rng.uniform(0.4, 1.6))

    duration = t - float(rng.uniform(0.0, 0.3)) + 0.5
    assistant = timeline.render(duration, ASSISTANT)
    user, augmentation = augment_user(timeline.render(duration, USER), rng)
    words = sorted(timeline.words, key=lambda word: word[1])
    meta = {
        "split": split,
        "user_voice": asdict(voice),
        "held_out_voice": content.is_held_out(voice),
        "user_augmentation": augmentation,
        "assistant_voice": asdict(content.ASSISTANT_VOICE),
    }
    return Dialogue(assistant, user, words, turns, meta)


# --- files -----------------------------------------------------------------------------------


AUDIO_SUFFIXES = (".flac", ".wav")  # what `train data` writes, what earlier antiphons wrote


def write_dialogue(dialogue: Dialogue, audio_path: Path) -> None:
    """NAME.flac (or .wav) and NAME.json, each whole or not at all (a stop never leaves half a
    file)."""
    stereo = np.stack([dialogue.assistant, dialogue.user], axis=1)  # [samples, 2]: left, right
    write_atomically(
        audio_path, lambda tmp: soundfile.write(str(tmp), stereo, SAMPLE_RATE, subtype="PCM_16")
    )
    text = json.dumps(dialogue.to_json(), indent=1)
    write_atomically(audio_path.with_suffix(".json"), lambda tmp: tmp.write_text(text))


def _file_name(split: Split, index: int) -> str:
    return f"{split}_{index:06d}{AUDIO_SUFFIXES[0]}"


def _audio_beside(description: Path) -> Path | None:
    """The audio file of a dialogue's description, if there is one."""
    found = (description.with_suffix(suffix) for suffix in AUDIO_SUFFIXES)
    return next((path for path in found if path.is_file()), None)


def _generate_block(job: tuple[str, int, Split, int, int, frozenset[int], frozenset[int]]) -> None:
    """Dialogues first..last-1 in a process of their own. Those in `made` are made again
    (espeak-ng's state goes on through them) but not written; those in `left_out` crashed the
    synthesizer and are not made. Before each dialogue its index goes to `.making-FIRST` (a
    crash leaves it there); at the end the rows go to `.rows-FIRST.json`."""
    out_dir, seed, split, first, last, made, left_out = job
    out = Path(out_dir)
    rows = []
    for index in range(first, last):
        if index in left_out:
            continue
        (out / f".making-{first}").write_text(str(index))
        rng = np.random.default_rng([seed, _SPLIT_STREAM[split], index])
        dialogue = make_dialogue(rng, split)
        dialogue.meta.update(seed=seed, index=index, generator=GENERATOR_VERSION)
        name = _file_name(split, index)
        if index not in made:
            write_dialogue(dialogue, out / name)
        rows.append({"path": name, "duration": round(dialogue.duration, 3)})
    text = json.dumps(rows)
    write_atomically(out / f".rows-{first}.json", lambda tmp: tmp.write_text(text))


MAX_LEFT_OUT = 10  # dialogues of one block the synthesizer may crash on before we give up


def _make_blocks(
    out: Path, seed: int, split: Split, todo: list[tuple[int, int]], done: set[int],
    workers: int, bar: tqdm, make: Callable[[tuple], None] = _generate_block,
) -> dict[int, list[dict]]:  # fmt: skip
    """Run each block in a fresh process, `workers` at a time; returns each block's rows.

    espeak-ng can crash the process (a segmentation fault, on some voices and words: en-us-nyc
    with the rob variant, pitch 20 and range 88 says no "Nice to meet you."): a block whose
    process died is run again without the dialogue it was making, which is left out with a
    warning. The crash is the same every time, so every run leaves out the same dialogues."""
    context = multiprocessing.get_context("spawn")  # a fresh espeak-ng per block
    left_out: dict[int, set[int]] = {first: set() for first, _ in todo}
    waiting = deque(todo)
    running: dict[int, tuple[multiprocessing.process.BaseProcess, int]] = {}
    rows: dict[int, list[dict]] = {}
    try:
        while waiting or running:
            while waiting and len(running) < max(1, workers):
                first, last = waiting.popleft()
                made = frozenset(i for i in range(first, last) if i in done)
                job = (str(out), seed, split, first, last, made, frozenset(left_out[first]))
                (out / f".making-{first}").unlink(missing_ok=True)
                started = context.Process(target=make, args=(job,), daemon=True)
                started.start()
                running[first] = (started, last)
            multiprocessing.connection.wait([p.sentinel for p, _ in running.values()])
            for first, (process, last) in list(running.items()):
                code = process.exitcode
                if code is None:
                    continue
                del running[first]
                if code == 0:
                    rows[first] = json.loads((out / f".rows-{first}.json").read_text())
                    (out / f".rows-{first}.json").unlink()
                    bar.update(last - first)
                    continue
                making = out / f".making-{first}"
                if code > 0 or not making.is_file():  # an error of its own (printed above)
                    raise SpeechError(
                        f"making dialogues {first}..{last - 1} failed (exit code {code}): "
                        "the error is above"
                    )
                crashed = int(making.read_text())
                left_out[first].add(crashed)
                log.warning(
                    "dialogue %d: the synthesizer crashed making it (signal %d): left out",
                    crashed, -code,
                )  # fmt: skip
                if len(left_out[first]) > MAX_LEFT_OUT:
                    raise SpeechError(
                        f"the synthesizer crashed on {len(left_out[first])} dialogues of "
                        f"{first}..{last - 1}: check espeak-ng, flite and festival"
                    )
                waiting.appendleft((first, last))
    finally:
        for child, _ in running.values():
            child.terminate()
        for path in out.glob(".making-*"):
            path.unlink(missing_ok=True)
    return rows


def generate(
    out_dir: str | Path,
    count: int,
    seed: int = 0,
    split: Split = "train",
    workers: int = 1,
    progress: bool = True,
    block: int = 200,
) -> list[dict]:
    """Write `count` dialogues of `split` into `out_dir`; returns the manifest rows (also
    written to manifest.jsonl).

    The same seed gives the same files whatever the number of workers: espeak-ng carries state
    from one utterance to the next (the same text comes out slightly different the second
    time), so every `block` of dialogues is made in a fresh process, in order. Dialogue i
    depends only on (seed, split, i), so a folder grows, and a stopped run goes on: what is
    there whole (listed, or written by a run that stopped) is not made again.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    listed, generator = _listed_rows(out, seed, split)
    reach = 1 + max(listed, default=-1)  # a dialogue the synthesizer crashed on is not listed
    if reach > count:
        raise ConfigError(
            f"{out} lists dialogues up to {reach}; --count {count} would drop the rest from its "
            f"manifest: give --count {reach} or more, or another --out"
        )
    if generator != GENERATOR_VERSION:  # a folder never holds two generators' dialogues
        if reach < count:
            raise ConfigError(
                f"{out} holds dialogues of generator version {generator}, this antiphon makes "
                f"version {GENERATOR_VERSION}: give another --out for more dialogues"
            )
        return [listed[i] for i in sorted(listed)]  # whole as it is: nothing to make
    there = listed | _unlisted_rows(out, seed, split, count, listed)
    blocks = [(i, min(i + block, count)) for i in range(0, count, block)]
    todo = [b for b in blocks if any(i not in there for i in range(*b))]
    bar = tqdm(total=count, desc=f"dialogues ({split})", unit="dlg", disable=not progress)
    bar.update(count - sum(last - first for first, last in todo))
    made = _make_blocks(out, seed, split, todo, set(there), workers, bar) if todo else {}
    bar.close()
    rows: list[dict] = []
    for first, last in blocks:
        rows += made[first] if first in made else [there[i] for i in range(first, last)]
    lines = "".join(json.dumps(row) + "\n" for row in rows)
    write_atomically(out / "manifest.jsonl", lambda tmp: tmp.write_text(lines))
    return rows


def _index(name: str) -> int:
    return int(Path(name).stem.rsplit("_", 1)[1])


def _listed_rows(out: Path, seed: int, split: Split) -> tuple[dict[int, dict], int]:
    """The dialogues `out`'s manifest lists (files present), by index, and the generator
    version that made them; a folder of another seed or split is refused (its dialogue i is not
    this one's)."""
    if not (out / "manifest.jsonl").is_file():
        return {}, GENERATOR_VERSION
    present = [
        row
        for row in manifest_rows(out)
        if (out / row["path"]).is_file() and (out / row["path"]).with_suffix(".json").is_file()
    ]
    if not present:
        return {}, GENERATOR_VERSION
    description = read_description(out / present[0]["path"])
    _check_made_here(description, out, seed, split, generator=False)
    return {_index(row["path"]): row for row in present}, description.get("generator", 1)


def _unlisted_rows(
    out: Path, seed: int, split: Split, count: int, listed: dict[int, dict]
) -> dict[int, dict]:
    """Dialogues a stopped run wrote whole but did not list yet, by index (each file is
    written whole or not at all, the description after the audio)."""
    found = {}
    for described in out.glob(f"{split}_*.json"):
        index = _index(described.name)
        audio = _audio_beside(described)
        if index >= count or index in listed or audio is None:
            continue
        try:
            description = json.loads(described.read_text())
        except (OSError, ValueError):
            continue  # half written by an older antiphon: made again
        _check_made_here(description, out, seed, split)
        found[index] = {"path": audio.name, "duration": round(description["duration"], 3)}
    return found


def _check_made_here(
    description: dict, out: Path, seed: int, split: Split, generator: bool = True
) -> None:
    """Refuse a folder whose dialogues another seed or split made, or (`generator`) another
    generator."""
    if (description.get("seed"), description.get("split")) != (seed, split):
        raise ConfigError(
            f"{out} holds dialogues of seed {description.get('seed')}, split "
            f"{description.get('split')}: give another --out for seed {seed}, split {split} "
            f"(or --seed {description.get('seed')})"
        )
    if generator and description.get("generator", 1) != GENERATOR_VERSION:
        raise ConfigError(
            f"{out} holds dialogues of generator version {description.get('generator', 1)}, "
            f"this antiphon makes version {GENERATOR_VERSION}: give another --out"
        )


def _parsed(path: Path, parse: Callable[[str], object]) -> object:
    """`parse` of a generated file's text; a missing or damaged file says what to do."""
    try:
        return parse(path.read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(
            f"{path}: cannot read it ({error}); generate the dialogues again with `train data`"
        ) from error


def manifest_rows(folder: str | Path) -> list[dict]:
    """The rows of a generated folder's manifest.jsonl (path, duration, ...), in file order."""
    rows = _parsed(
        Path(folder) / "manifest.jsonl",
        lambda text: [json.loads(line) for line in text.splitlines() if line.strip()],
    )
    return cast(list[dict], rows)


def read_manifest(folder: str | Path) -> list[Path]:
    """The audio files a generated folder lists (or every audio file when it has no
    manifest)."""
    folder = Path(folder)
    if (folder / "manifest.jsonl").is_file():
        return [folder / row["path"] for row in manifest_rows(folder)]
    audio = sorted(path for suffix in AUDIO_SUFFIXES for path in folder.glob(f"*{suffix}"))
    described = {path.stem: path for path in reversed(audio)}  # a name once: FLAC before WAV
    return sorted(described.values())


def read_description(wav_path: str | Path) -> dict:
    """The JSON description beside a generated dialogue: its turns, alignments and voices."""
    description = _parsed(Path(wav_path).with_suffix(".json"), json.loads)
    if not isinstance(description, dict):
        raise ConfigError(f"{wav_path}: its .json is not a dialogue description")
    return description


def read_dialogue(wav_path: str | Path) -> tuple[np.ndarray, dict]:
    """stereo float32 [2, samples] (assistant, user) and the JSON description."""
    pcm, rate = soundfile.read(str(wav_path), dtype="float32", always_2d=True)
    if rate != SAMPLE_RATE or pcm.shape[1] != 2:
        raise ValueError(f"{wav_path}: expected stereo {SAMPLE_RATE} Hz, got {pcm.shape} {rate}")
    return pcm.T.copy(), read_description(wav_path)
