"""Does the model hear itself? The demo model on a simulated loudspeaker echo, with and without
echo cancellation, against the same conversation with no echo at all.

    OMP_NUM_THREADS=2 .venv/bin/python scripts/echo_model.py [--assets app/assets] [--json F]

Each run is one question spoken (espeak-ng, a voice no training dialogue has) after a second of
silence, then silence from the user for --seconds. The model's reply goes to a simulated
speaker (played one frame after it is computed, as the runtime's jitter buffer does) and comes
back into the microphone through a room: --delay ms later, an exponentially decaying impulse
response (--rt60), --gain dB. Three conditions per question, all else equal (same seed):

- no echo        the microphone hears the user only
- echo           the microphone hears the user and the room's echo of the speaker
- echo + AEC     the same, through the product's echo canceller (audio_io.echo, WebRTC AEC3)

Reported per condition: the text the model wrote after its first answer ended (what it said
to its own voice), the seconds it spoke, and, with the canceller, the median ERLE. The model
heard its own voice if the echo condition speaks and writes more than the no-echo one; the
canceller works if the third condition matches the first. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from pathlib import Path

import numpy as np
import torch

from app.core.engine import Engine
from app.core.models import ASSETS, bundled_model
from app.train.speech import speak
from app.train.utterance import Voice
from audio_io.echo import EchoCanceller, EchoConfig

RATE, N = 24000, 1920
QUESTIONS = (
    "What is your name?",
    "What is three plus four?",
    "Can you spell dog?",
    "Is ice cold?",
    "Can you count to five?",
)
USER_VOICE = Voice("en-us", variant="m3", speed=160)
ACTIVE_RMS = 0.01  # the assistant is audible in a frame (app.train.quality's threshold)


def room_response(delay_ms: float, rt60: float, gain_db: float, seed: int = 0) -> np.ndarray:
    """A delay, then exponentially decaying noise that falls 60 dB in rt60 seconds."""
    rng = np.random.default_rng(seed)
    tail = np.arange(int(rt60 * RATE)) / RATE
    taps = rng.standard_normal(len(tail)) * 10 ** (-3 * tail / rt60)
    taps[0] = 3.0  # the direct path
    taps *= 10 ** (gain_db / 20) / np.sqrt(np.sum(taps**2))
    return np.concatenate([np.zeros(int(delay_ms * RATE / 1000)), taps]).astype(np.float32)


def converse(
    engine: Engine, user: np.ndarray, room: np.ndarray | None, cancel: bool
) -> tuple[list[tuple[int, str]], np.ndarray, list[float]]:
    """One conversation on the simulated loop: the model's (frame, text)s, its audio, ERLEs."""
    engine.reset()
    frames = len(user) // N
    speaker = np.zeros((frames + 3) * N, np.float32)  # what the speaker sounds, sample by sample
    echo = EchoCanceller(EchoConfig(RATE, N, lead=0.0)) if cancel else None
    texts, said, erle = [], [], []
    for t in range(frames):
        mic = user[t * N : (t + 1) * N].copy()
        if room is not None:  # the room's echo of what sounded up to the end of this frame
            start = max(0, t * N - len(room) + 1)
            sounded = speaker[start : (t + 1) * N]
            mic += np.convolve(sounded, room)[t * N - start : (t + 1) * N - start]
        heard = mic
        if echo is not None:
            cleaned = echo.cancel(mic, t * N / RATE)  # reference: what sounded meanwhile
            heard = cleaned.pcm
            if cleaned.erle_db is not None:
                erle.append(cleaned.erle_db)
        result = engine.step(heard)
        said.append(result.pcm)
        if result.text and not result.heard:  # what it says, not what it wrote down it heard
            texts.append((t, result.text))
        speaker[(t + 2) * N : (t + 3) * N] = result.pcm  # one frame of jitter buffer
        if echo is not None:
            echo.played(result.pcm, (t + 2) * N / RATE)
    return texts, np.concatenate(said), erle


def first_answer_end(active: np.ndarray, after: int) -> int:
    """The frame after the first stretch of speech from `after` on (0.4 s of quiet ends it)."""
    speaking, quiet = False, 0
    for t in range(after, len(active)):
        if active[t]:
            speaking, quiet = True, 0
        elif speaking:
            quiet += 1
            if quiet == 5:
                return t - 4
    return len(active)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--assets", type=Path, default=ASSETS)
    parser.add_argument("--seconds", type=float, default=15.0, help="of silence after a question")
    parser.add_argument("--delay", type=float, default=40.0, help="ms, speaker to microphone")
    parser.add_argument("--rt60", type=float, default=0.2, help="s, the room's reverberation")
    parser.add_argument("--gain", type=float, default=-10.0, help="dB, the echo's level")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    model = bundled_model(torch.device("cpu"), folder=args.assets, name=str(args.assets))
    engine = Engine(model, dataclasses.replace(model.sampling, seed=args.seed))
    room = room_response(args.delay, args.rt60, args.gain)
    conditions = {"no echo": (None, False), "echo": (room, False), "echo + AEC": (room, True)}
    rows: list[dict] = []
    for question in QUESTIONS:
        pcm = speak(question, USER_VOICE).pcm.astype(np.float32)
        pcm *= 0.05 / (np.sqrt(np.mean(pcm**2)) + 1e-9)
        user = np.concatenate([np.zeros(RATE, np.float32), pcm, np.zeros(int(args.seconds * RATE))])
        user = np.pad(user, (0, -len(user) % N))
        asked_end = (RATE + len(pcm)) // N
        for name, (path, cancel) in conditions.items():
            texts, said, erle = converse(engine, user, path, cancel)
            active = np.sqrt((said.reshape(-1, N) ** 2).mean(axis=1)) > ACTIVE_RMS
            end = first_answer_end(active, asked_end)
            rows.append(
                {
                    "question": question,
                    "condition": name,
                    "answer": "".join(text for t, text in texts if asked_end <= t < end).strip(),
                    "after": "".join(text for t, text in texts if t >= end).strip(),
                    "words_after": sum(1 for t, text in texts if t >= end and text.strip()),
                    "speaking_s": float(active.sum() * N / RATE),
                    "speaking_after_s": float(active[end:].sum() * N / RATE),
                    "erle_db": statistics.median(erle) if erle else None,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    print(
        f"\n{args.assets}: echo {args.delay:g} ms later, RT60 {args.rt60:g} s, {args.gain:g} dB; "
        f"{args.seconds:g} s of user silence after each question\n"
    )
    print("| condition | speaking (s, mean) | speaking after its answer (s, mean) | text pieces "
          "after its answer (mean) | ERLE (dB, median) |")  # fmt: skip
    print("|---|---|---|---|---|")
    for name in conditions:
        mine = [r for r in rows if r["condition"] == name]
        erles = [r["erle_db"] for r in mine if r["erle_db"] is not None]
        print(
            f"| {name} | {np.mean([r['speaking_s'] for r in mine]):.1f} | "
            f"{np.mean([r['speaking_after_s'] for r in mine]):.1f} | "
            f"{np.mean([r['words_after'] for r in mine]):.1f} | "
            f"{f'{statistics.median(erles):.1f}' if erles else '-'} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
