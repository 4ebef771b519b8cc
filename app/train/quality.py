"""`antiphon train eval`: the demo model's quality figures (issue 6) on held-out dialogues.

Each held-out dialogue (`train data --split eval`: held-out phrasings, numbers and voices) has
its user channel streamed through the model frame by frame, exactly as `antiphon run` does; the
figures compare what the model said and wrote with what the dialogue asked for:

- answer_correct     the first sentence of the inner monologue after a request is a right
                     answer, whole ("Five, six, seven." for a count to seven, not one number
                     more; for a greeting, a farewell or the name, it says the word: "hello",
                     "bye", "antiphon"), per request (`answers.answer_right`) (target >= 0.80)
- audio_matches      DTW on MFCCs of the assistant's audio after a request against renderings
                     (in the assistant's voice) of the right answer and of wrong answers of
                     the same form picks a right one
- audio_says_text    the answer the audio says (as above) is the one the monologue wrote (the
                     candidate closest to the text, word by word): an independent check that
                     the voice says what the text says                     (target >= 0.90)
- answered           share of requests after which the assistant spoke at all before the next
- answer_kind_right  share of requests answered with an answer of the right kind (a sum for a
                     sum, a count for a count, yes or no for a fact...), right or not: whether
                     the model understood what was asked, before whether it got it right
- codec_stoi         STOI of the codec's reconstruction of the users' voices, clean: each
                     dialogue's first question spoken again in its user's voice with no room,
                     band or noise (target >= 0.80 for the held-out speaker, shown apart)
- codec_stoi_heard   the same on the user channel as the microphone had it (room, band,
                     noise): what the model hears; lower, since noise is not speech
- silent_while_user  share of the frames with user speech in which the assistant is silent
                                                                           (target >= 0.90)
- answers_within_1s  share of requests answered (audio) within 1.0 s of the user's end; an
                     answer is new sound, not talk that began before the request and went on
                     through it (`_answer_onset`)                          (target >= 0.80)
- pause_kept_silent  share of mid-sentence pauses during which the assistant stayed silent
                                                                           (target >= 0.80)
- stops_within_0_5s  share of interruptions (the assistant was speaking) after which it is
                     silent within 0.5 s                                   (target >= 0.80)

Activity is the assistant channel's RMS per 80 ms frame above ACTIVE_RMS (the demo voice speaks
at about 0.08). Each dialogue is followed by TAIL_S of silence, so that its last request has as
long to be answered as the others. Every figure is also given per intent and for the users who
speak with the held-out voice (a speaker no training dialogue has). A JSON report has every
figure and the per-request details; `--fdb-out DIR` also cuts each request into a
Full-Duplex-Bench sample (input.wav, output.wav, annotations; app.train.fdbsets) for
`antiphon eval`.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from app.core.engine import BatchEngine, Engine
from app.core.models import ASSETS, LoadedModel, add_format_arguments, bundled_model, with_formats
from model.codec import Codec
from model.errors import ConfigError

from .answers import SENTENCE_END, answer_kind, answer_right, closest_candidate, normalise
from .content import ASSISTANT_VOICE
from .dialogues import USER, read_description, read_dialogue, read_manifest
from .fdbsets import write_fdb_samples
from .features import dtw_cost, edit_distance, mfcc
from .paired import format_paired, paired, read_report
from .speech import SAMPLE_RATE, Voice, speak
from .stoi import stoi

log = logging.getLogger(__name__)

ACTIVE_RMS = 0.01  # -40 dBFS
QUIET_FRAMES = 5  # 400 ms of silence: the assistant has stopped (not a pause between words)
TAIL_S = 2.0  # silence after each dialogue, so that the last request has time to be answered
FIGURES = (
    "answer_correct",
    "answered",
    "answer_kind_right",
    "heard_wer",  # lower is better; none for a model that writes down nothing it hears
    "audio_matches",
    "audio_says_text",
    "codec_stoi",
    "codec_stoi_heard",
    "silent_while_user",
    "answers_within_1s",
    "pause_kept_silent",
    "stops_within_0_5s",
)
TARGETS = {
    "answer_correct": 0.8,
    "audio_says_text": 0.9,
    "codec_stoi": 0.8,
    "silent_while_user": 0.9,
    "answers_within_1s": 0.8,
    "pause_kept_silent": 0.8,
    "stops_within_0_5s": 0.8,
}
HELD_OUT_VOICE_TARGET = 0.7  # answer_correct for users speaking with the held-out voice


# --- running a dialogue ---------------------------------------------------------------------------


@dataclass
class Session:
    """What the model did over one dialogue."""

    assistant: np.ndarray  # float32 [frames * frame_size]
    texts: list[tuple[int, str]]  # (frame, new readable text)
    frame_duration: float
    heard: list[tuple[int, str]] = field(default_factory=list)  # what it wrote of the user's
    hears: bool = False  # the model writes down what it hears (LMConfig.heard_ids)

    def active(self) -> np.ndarray:
        """[frames] bool: the assistant is audible in the frame."""
        frames = self.assistant.reshape(-1, int(round(self.frame_duration * SAMPLE_RATE)))
        return np.sqrt((frames**2).mean(axis=1)) > ACTIVE_RMS

    def text_between(self, start: float, end: float, heard: bool = False) -> str:
        pieces = self.heard if heard else self.texts
        return "".join(t for f, t in pieces if start <= f * self.frame_duration < end)


def run_dialogue(engine: Engine, user: np.ndarray) -> Session:
    engine.reset()
    size = engine.frame_size
    padded = np.pad(user, (0, -len(user) % size)).astype(np.float32)
    out: list[np.ndarray] = []
    texts: dict[bool, list[tuple[int, str]]] = {False: [], True: []}  # heard -> pieces
    for i in range(len(padded) // size):
        result = engine.step(padded[i * size : (i + 1) * size])
        out.append(result.pcm)
        if result.text:
            texts[result.heard].append((i, result.text))
    hears = engine.model.lm.config.heard_ids is not None
    return Session(np.concatenate(out), texts[False], engine.frame_duration, texts[True], hears)


@dataclass
class _Running:
    """A dialogue in a slot of the batch: its user channel, and what the model did so far."""

    index: int
    user: np.ndarray  # padded to whole frames
    out: list[np.ndarray] = field(default_factory=list)
    texts: list[tuple[int, str]] = field(default_factory=list)
    heard: list[tuple[int, str]] = field(default_factory=list)


def run_dialogues(
    model: LoadedModel, users: Iterable[np.ndarray], slots: int
) -> Iterator[tuple[int, Session]]:
    """Many dialogues at once: `slots` conversations in one batch, each as `run_dialogue` runs
    it alone (a fresh slot, the model's sampling from its start); a slot that finishes takes the
    next dialogue. Yields (the dialogue's index in `users`, its Session) as each one ends.

    On a CPU the batch costs little more than one conversation a step (the weights are read
    once for all), so an evaluation runs several times faster. The slots do not see each other
    (tests/app/train/test_quality.py), but a batch's matrix products may round differently
    from a single conversation's, and sampled tokens can then part ways."""
    engine = BatchEngine(model, slots)
    size = engine.frame_size
    waiting = iter(enumerate(users))
    running: dict[int, _Running] = {}

    def start_next() -> bool:
        item = next(waiting, None)
        if item is None:
            return False
        index, user = item
        padded = np.pad(user, (0, -len(user) % size)).astype(np.float32)
        running[engine.open()] = _Running(index, padded)
        return True

    while len(running) < slots and start_next():
        pass
    while running:
        frames = {}
        for slot, dialogue in running.items():
            at = len(dialogue.out) * size
            frames[slot] = dialogue.user[at : at + size]
        for slot, result in engine.step(frames).items():
            dialogue = running[slot]
            if result.text:
                pieces = dialogue.heard if result.heard else dialogue.texts
                pieces.append((len(dialogue.out), result.text))
            dialogue.out.append(result.pcm)
            if len(dialogue.out) * size == len(dialogue.user):
                del running[slot]
                engine.close(slot)
                yield (
                    dialogue.index,
                    Session(
                        np.concatenate(dialogue.out),
                        dialogue.texts,
                        engine.frame_duration,
                        dialogue.heard,
                        model.lm.config.heard_ids is not None,
                    ),
                )
                start_next()


@dataclass
class _Renderings:
    """MFCCs of renderings of candidate answers in the assistant's voice, cached."""

    cache: dict[str, np.ndarray] = field(default_factory=dict)

    def __call__(self, text: str) -> np.ndarray:
        if text not in self.cache:
            self.cache[text] = mfcc(speak(text, ASSISTANT_VOICE).pcm, SAMPLE_RATE)
        return self.cache[text]


def score_dialogue(session: Session, description: dict, renderings: _Renderings) -> dict:
    """Per-request and per-frame results of one dialogue."""
    active = session.active()
    step = session.frame_duration
    frames = len(active)
    turns = description["turns"]
    user_frames = np.zeros(frames, dtype=bool)
    for _word, (start, end), speaker in description["alignments"]:
        if speaker == USER:
            user_frames[int(start / step) : int(np.ceil(end / step))] = True
    requests = []
    for i, turn in enumerate(turns):
        following = [t["user_start"] for t in turns[i + 1 :] if t["user_start"] > turn["user_end"]]
        window_end = min(following) if following else frames * step
        record: dict[str, Any] = {
            "kind": turn["kind"],
            "intent": turn["turn"]["intent"],
            "question": turn["turn"]["question"],
        }
        if turn["kind"] in ("answer", "pause"):
            record.update(_answer(session, active, turn, window_end, renderings))
        if turn["kind"] == "pause" and turn["pause"]:
            a, b = (int(t / step) for t in turn["pause"])
            record["pause_silent"] = bool(not active[a + 1 : b].any())
        if turn["kind"] == "interrupt":
            record.update(_interruption(active, turn["interrupted_at"], step))
        if session.hears and turn["kind"] in ("answer", "pause"):  # how well it wrote down
            record.update(_heard(session, description["alignments"], turn, window_end))  # what
            # it heard (a request said over the assistant's words is not written down at all)
        requests.append(record)
    silent = ~active[user_frames[:frames]]
    return {
        "requests": requests,
        "user_frames": int(user_frames.sum()),
        "silent_user_frames": int(silent.sum()),
    }


def _heard(session: Session, alignments: list, turn: dict, window_end: float) -> dict:
    """What the model wrote down of a request (from its start to the next request's), and
    its word error rate against the words the user said (as the monologue spells them)."""
    said = " ".join(
        word
        for word, (start, end), speaker in alignments
        if speaker == USER and turn["user_start"] - 0.01 <= start and end <= turn["user_end"] + 0.01
    )
    heard = session.text_between(turn["user_start"], window_end, heard=True)
    words = normalise(said).split()
    errors = edit_distance(words, normalise(heard).split())
    return {"heard": heard.strip(), "heard_wer": round(errors / max(1, len(words)), 4)}


def _answer(
    session: Session, active: np.ndarray, turn: dict, window_end: float, renderings
) -> dict:
    step = session.frame_duration
    user_end = turn["user_end"]
    text = _answer_text(session, turn, window_end)
    correct = answer_right(text, turn["turn"])
    a, b = int(user_end / step), int(window_end / step)
    onset = _answer_onset(active, int(turn["user_start"] / step), a, b)
    latency = None if onset is None else max(0.0, float(onset * step - user_end))
    picked, audio_ok = None, False
    if onset is not None:
        start = onset * step
        stop = (onset + int(np.flatnonzero(active[onset:b])[-1]) + 1) * step
        segment = session.assistant[int(start * SAMPLE_RATE) : int(stop * SAMPLE_RATE)]
        features = mfcc(segment, SAMPLE_RATE)
        answers, distractors = turn["turn"]["answers"], turn["turn"]["distractors"]
        costs = {c: dtw_cost(features, renderings(c)) for c in [*answers, *distractors]}
        picked = min(costs, key=costs.__getitem__)
        audio_ok = picked in answers
    written = closest_candidate(text, [*turn["turn"]["answers"], *turn["turn"]["distractors"]])
    return {
        "text": text.strip(),
        "answer_correct": correct,
        "answer_kind": answer_kind(text),
        "latency": latency,
        "audio_picked": picked,
        "audio_matches": audio_ok,
        "text_picked": written,
        "audio_says_text": picked is not None and picked == written,
    }


def _answer_text(session: Session, turn: dict, window_end: float) -> str:
    """The monologue after a request: from a frame before the user's end to the next request,
    led by the sentence it was in the middle of there if that began during the request (an
    answer's text runs ahead of its sound, and an early answer is read whole, not from its
    second word)."""
    start = turn["user_end"] - session.frame_duration
    during = session.text_between(turn["user_start"], start)
    return SENTENCE_END.split(during)[-1] + session.text_between(start, window_end)


def _answer_onset(active: np.ndarray, request_start: int, end: int, window_end: int) -> int | None:
    """The frame the answer to a request starts in (None: none before `window_end`): the first
    audible frame from the user's `end` on, unless the assistant was speaking before the
    request began and still is (a count it was not stopped in, talk over the whole request):
    that is no answer, and the answer is the next sound after it ends (QUIET_FRAMES of
    silence). An answer that starts while the user is still asking starts at once (0 s)."""
    frame = end
    if end < len(active) and active[end]:
        start = end  # back to where this speech began, over gaps between its words
        while start > 0 and active[max(0, start - QUIET_FRAMES) : start].any():
            start -= 1
        if start < request_start:
            while frame < window_end and active[frame : frame + QUIET_FRAMES].any():
                frame += 1
    onsets = np.flatnonzero(active[frame:window_end])
    return None if len(onsets) == 0 else frame + int(onsets[0])


def _interruption(active: np.ndarray, interrupted_at: float, step: float) -> dict:
    """When the assistant went quiet for good (QUIET_FRAMES in a row: a pause between counted
    words is shorter) after the user cut in; only if it was speaking then."""
    at = int(interrupted_at / step)
    speaking = bool(active[max(0, at - 3) : at + 1].any())
    if not speaking:
        return {"speaking_when_interrupted": False}
    stop = None
    for f in range(at, len(active)):
        if not active[f : f + QUIET_FRAMES].any():
            stop = max(0.0, float(f * step - interrupted_at))
            break
    return {"speaking_when_interrupted": True, "stop_after": stop}


# --- the figures ---------------------------------------------------------------------------------


def codec_stoi(codec: Codec, user: np.ndarray) -> float:
    with torch.no_grad():
        pcm = torch.from_numpy(user).to(next(codec.parameters()).device).view(1, 1, -1)
        decoded = codec.decode(codec.encode(pcm))[0, 0, : len(user)].float().cpu().numpy()
    return stoi(user, decoded, SAMPLE_RATE)


CLEAN_RMS = 0.05  # about -26 dBFS


def clean_speech(description: dict) -> np.ndarray:
    """The dialogue's first question, spoken again in its user's voice with nothing added."""
    voice = Voice(**description["user_voice"])
    pcm = speak(description["turns"][0]["turn"]["question"], voice).pcm
    return (pcm * (CLEAN_RMS / (float(np.sqrt(np.mean(pcm**2))) + 1e-9))).astype(np.float32)


def _share(values: list[bool]) -> float | None:
    return float(np.mean(values)) if values else None


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _figures(results: list[dict]) -> dict[str, Any]:
    requests = [r for result in results for r in result["requests"]]
    answered = [r for r in requests if "answer_correct" in r]
    interrupted = [r for r in requests if r.get("speaking_when_interrupted")]
    user_frames = sum(r["user_frames"] for r in results)
    return {
        "answer_correct": _share([r["answer_correct"] for r in answered]),
        "answered": _share([r["latency"] is not None for r in answered]),
        "answer_kind_right": _share([r.get("answer_kind") == r["intent"] for r in answered]),
        "heard_wer": _mean([r["heard_wer"] for r in answered if "heard_wer" in r]),
        "audio_matches": _share([r["audio_matches"] for r in answered]),
        "audio_says_text": _share([r["audio_says_text"] for r in answered if r["text_picked"]]),
        "codec_stoi": _mean([r["stoi_clean"] for r in results if "stoi_clean" in r]),
        "codec_stoi_heard": _mean([r["stoi_heard"] for r in results if "stoi_heard" in r]),
        "silent_while_user": (
            sum(r["silent_user_frames"] for r in results) / user_frames if user_frames else None
        ),
        "answers_within_1s": _share(
            [r["latency"] is not None and r["latency"] <= 1.0 for r in answered]
        ),
        "pause_kept_silent": _share([r["pause_silent"] for r in requests if "pause_silent" in r]),
        "stops_within_0_5s": _share(
            [r["stop_after"] is not None and r["stop_after"] <= 0.5 for r in interrupted]
        ),
    }


def summarize(results: list[dict]) -> dict[str, Any]:
    requests = [r for result in results for r in result["requests"]]
    answered = [r for r in requests if "answer_correct" in r]
    interrupted = [r for r in requests if r.get("speaking_when_interrupted")]
    latencies = [r["latency"] for r in answered if r["latency"] is not None]
    held = [i for i, r in enumerate(results) if r.get("held_out_voice")]
    intents = sorted({r["intent"] for r in answered})
    return {
        "figures": _figures(results),
        "targets": TARGETS,
        "held_out_voice": _figures([results[i] for i in held]),
        "per_intent": {
            intent: {
                "requests": sum(r["intent"] == intent for r in answered),
                "answer_correct": _share(
                    [r["answer_correct"] for r in answered if r["intent"] == intent]
                ),
                "answer_kind_right": _share(
                    [r.get("answer_kind") == intent for r in answered if r["intent"] == intent]
                ),
                "heard_wer": _mean(
                    [r["heard_wer"] for r in answered if r["intent"] == intent and "heard_wer" in r]
                ),
                "audio_says_text": _share(
                    [
                        r["audio_says_text"]
                        for r in answered
                        if r["intent"] == intent and r["text_picked"]
                    ]
                ),  # fmt: skip
            }
            for intent in intents
        },
        "counts": {
            "dialogues": len(results),
            "held_out_voice_dialogues": len(held),
            "requests_answered": len(answered),
            "interruptions_while_speaking": len(interrupted),
            "user_frames": sum(r["user_frames"] for r in results),
        },
        "median_latency_s": float(np.median(latencies)) if latencies else None,
    }


def evaluate(
    model: LoadedModel,
    folder: Path,
    count: int | None,
    progress: bool = True,
    fdb_out: Path | None = None,
    batch: int = 8,
) -> dict:
    """The figures over the first `count` dialogues of `folder`, `batch` of them at a time."""
    files = read_manifest(folder)[:count]
    renderings = _Renderings()
    stereo: dict[int, np.ndarray] = {}  # of the dialogues in the batch
    descriptions: dict[int, dict] = {}

    def users() -> Iterator[np.ndarray]:
        for index, wav in enumerate(files):
            stereo[index], descriptions[index] = read_dialogue(wav)
            user = stereo[index][1]
            yield np.concatenate([user, np.zeros(round(TAIL_S * SAMPLE_RATE), user.dtype)])

    results: list[dict] = [{} for _ in files]
    bar = tqdm(total=len(files), desc="eval", unit="dlg", disable=not progress)
    for index, session in run_dialogues(model, users(), batch):
        user, description, wav = stereo.pop(index)[1], descriptions.pop(index), files[index]
        result = score_dialogue(session, description, renderings)
        result["file"] = wav.name
        result["held_out_voice"] = bool(description.get("held_out_voice"))
        result["stoi_heard"] = codec_stoi(model.codec, user)
        result["stoi_clean"] = codec_stoi(model.codec, clean_speech(description))
        results[index] = result
        if fdb_out is not None:
            assistant = session.assistant[: len(user)]
            write_fdb_samples(fdb_out, wav.stem, user, assistant, description, SAMPLE_RATE)
        bar.update()
    bar.close()
    report = summarize(results)
    report["model"] = model.name
    report["dialogues"] = results
    return report


def format_figures(report: dict) -> str:
    def shown(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    lines = []
    for name in FIGURES:
        value = report["figures"].get(name)
        target = TARGETS.get(name)
        verdict = (
            "" if target is None or value is None else ("  ok" if value >= target else "  below")
        )
        lines.append(
            f"{name:20s} {shown(value):>7s}"
            + (f"  (target {target:.2f}){verdict}" if target else "")
        )
    held_stoi = report.get("held_out_voice", {}).get("codec_stoi")
    if held_stoi is not None:
        verdict = "  ok" if held_stoi >= TARGETS["codec_stoi"] else "  below"
        lines.append(
            f"{'held-out voice':20s} {shown(held_stoi):>7s}  (codec_stoi, target "
            f"{TARGETS['codec_stoi']:.2f}){verdict}"
        )
    held = report.get("held_out_voice", {}).get("answer_correct")
    if held is not None:
        verdict = "  ok" if held >= HELD_OUT_VOICE_TARGET else "  below"
        lines.append(
            f"{'held-out voice':20s} {shown(held):>7s}  (answer_correct, target "
            f"{HELD_OUT_VOICE_TARGET:.2f}){verdict}"
        )
    for intent, row in report.get("per_intent", {}).items():
        lines.append(
            f"  {intent:18s} {shown(row['answer_correct']):>7s}  answer_correct over "
            f"{row['requests']} requests; audio_says_text {shown(row['audio_says_text'])}"
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--assets", type=Path, default=ASSETS, help="exported model (default: the bundled one)"
    )
    parser.add_argument("--data", type=Path, required=True, help="held-out dialogues folder")
    parser.add_argument("--count", type=int, help="evaluate the first COUNT dialogues")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the whole report here")
    parser.add_argument(
        "--batch",
        type=int,
        default=8,
        help="dialogues run at once, in one batch (default 8; 1: one after the other)",
    )
    add_format_arguments(parser)  # the 8-bit formats' figures beside the full-precision ones
    parser.add_argument(
        "--against",
        type=Path,
        metavar="REPORT",
        help="another model's --json report on the same dialogues: compare request by request "
        "(which one is better, and how sure that is), its answers judged again by this "
        "version's rules",
    )
    parser.add_argument(
        "--fdb-out",
        type=Path,
        help="also cut every request into a Full-Duplex-Bench sample here (for `antiphon eval`)",
    )


def rejudged(report: dict, data: Path) -> dict:
    """Another eval's `report` (perhaps an older antiphon's, with other rules for a right
    answer) with every answer judged again by this version's `answer_right` and
    `answer_kind`, from the monologue text it kept and the dialogues' descriptions in `data`:
    a comparison then judges both models alike."""
    for dialogue in report["dialogues"]:
        wav = data / dialogue["file"]
        if not wav.with_suffix(".json").is_file():
            raise ValueError(f"it has {wav.stem}, which is not there")
        turns = read_description(wav)["turns"]
        for request, turn in zip(dialogue["requests"], turns, strict=True):
            if turn["turn"]["question"] != request["question"]:
                raise ValueError(f"{dialogue['file']}: another request than {data}'s")
            if "answer_correct" in request:
                request["answer_correct"] = answer_right(request["text"], turn["turn"])
                request["answer_kind"] = answer_kind(request["text"])
    return report


def run(args: argparse.Namespace) -> int:
    other = None
    if args.against is not None:
        other = read_report(args.against)  # says itself what is wrong with the file
        try:
            rejudged(other, args.data)
        except (ValueError, KeyError) as error:  # a ConfigError too: a dialogue not in --data
            raise ConfigError(
                f"--against {args.against}: not a report on the dialogues of {args.data} "
                f"({error}); give one that `train eval` wrote with the same --data"
            ) from error
    model = bundled_model(
        torch.device(args.device), args, folder=args.assets, name=str(args.assets)
    )
    model = with_formats(model, args)
    report = evaluate(model, args.data, args.count, fdb_out=args.fdb_out, batch=args.batch)
    print(format_figures(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    if other is not None:
        try:
            print(format_paired(paired(report, other), args.against))
        except ValueError as error:
            raise ConfigError(
                f"--against {args.against}: {error} (give a report on the same --data)"
            ) from error
    return 0
