"""Held-out dialogues cut into Full-Duplex-Bench (FDB) v1 samples, for `antiphon eval`.

A demo dialogue holds several requests; FDB scores one behaviour per sample, over the whole
output. So each request of a dialogue becomes one sample folder, cut from the user's and the
assistant's channels over the same span, under the FDB category it tests:

    smooth_turn_taking/<dialogue>_<turn>/  an answered request: from the user's first word to
                                           the next request (or the end); turn_taking.json
                                           holds the user's end of turn
    pause_handling/<dialogue>_<turn>/      a request with a mid-sentence pause: from the
                                           user's first word to the pause's end, so taking
                                           the turn means speaking into the pause
    user_interruption/<dialogue>_<turn>/   a request the user cuts off ("stop"): from its
                                           first word to the end; interrupt.json holds the
                                           interrupting words' span

The interruptions here tell the assistant to stop, so FDB's turn-over after the interruption
(answering the interrupting words) has no right value; its stop latency is the figure.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from app.core.files import (
    FDB_INPUT,
    FDB_OUTPUT,
    PAUSE_HANDLING,
    SMOOTH_TURN_TAKING,
    USER_INTERRUPTION,
)
from audio_io.files import write_wav


def fdb_samples(description: dict) -> list[tuple[str, str, float, float, dict]]:
    """(category, name suffix, start s, end s, annotations {file name: json}) per request."""
    turns = description["turns"]
    duration = float(description["duration"])
    samples: list[tuple[str, str, float, float, dict]] = []
    for i, turn in enumerate(turns):
        start = float(turn["user_start"])
        later = [float(t["user_start"]) for t in turns[i + 1 :] if t["user_start"] > start]
        end = min(later) if later else duration
        if turn["kind"] == "pause" and turn.get("pause"):
            pause_end = float(turn["pause"][1])
            samples.append((PAUSE_HANDLING, f"{i}", start, pause_end, {}))
        elif turn["kind"] == "answer":
            user_end = float(turn["user_end"]) - start
            stamp = [{"text": turn["turn"]["question"], "timestamp": [user_end, user_end]}]
            samples.append((SMOOTH_TURN_TAKING, f"{i}", start, end, {"turn_taking.json": stamp}))
        elif turn["kind"] == "interrupt" and turn.get("interrupted_at") is not None:
            stop = next((t for t in turns[i + 1 :] if t["kind"] == "stop"), None)
            if stop is None:
                continue
            stop_end = float(stop["user_end"])
            later = [float(t["user_start"]) for t in turns if t["user_start"] > stop_end]
            end = min(later) if later else duration
            span = [float(turn["interrupted_at"]) - start, stop_end - start]
            interrupt = [{"text": stop["turn"]["question"], "timestamp": span}]
            samples.append((USER_INTERRUPTION, f"{i}", start, end, {"interrupt.json": interrupt}))
    return samples


def write_fdb_samples(
    out: Path,
    name: str,
    user: np.ndarray,
    assistant: np.ndarray,
    description: dict,
    sample_rate: int,
) -> int:
    """Write the dialogue's samples under `out`; returns how many."""
    written = 0
    for category, suffix, start, end, notes in fdb_samples(description):
        a, b = int(start * sample_rate), min(len(user), int(end * sample_rate))
        if b - a < sample_rate // 2:  # too short to say anything about
            continue
        folder = out / category / f"{name}_{suffix}"
        folder.mkdir(parents=True, exist_ok=True)
        write_wav(folder / FDB_INPUT, user[a:b], sample_rate)
        write_wav(folder / FDB_OUTPUT, assistant[a:b], sample_rate)
        for file, content in notes.items():
            (folder / file).write_text(json.dumps(content, indent=1))
        written += 1
    return written
