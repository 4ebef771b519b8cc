"""Turn-taking: pure functions on speech segments and the inner monologue's pieces.

Inputs are what `app.eval.vad` and a recording give: speech segments `(start_s, end_s)` per
channel, sorted and disjoint, and the inner monologue as `Piece(time_s, text)`. Nothing here
reads files or runs a model. docs/evaluation.md says what each number means; `app.eval.fdb`
scores Full-Duplex-Bench's categories with the same rule, `app.eval.monologue` the text against
the audio.

The one rule FDB uses everywhere: the assistant *takes the turn* when what it says spans at least
1 s, or has more than 3 words. Words come from the inner monologue when there is one; without it
the rule is the duration alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

Segment = tuple[float, float]  # (start, end) in seconds

PAUSE = "pause"
END_OF_TURN = "end_of_turn"
INTERRUPTION = "interruption"
USER_BACKCHANNEL = "user_backchannel"
TURN_KINDS = (END_OF_TURN, PAUSE, INTERRUPTION, USER_BACKCHANNEL)

_TOKEN_ID = re.compile(r"<\d+>")  # what a model without tokenizer writes for a text token


@dataclass(frozen=True)
class Piece:
    time: float  # seconds on the recording's clock (the start of the frame that emitted it)
    text: str  # a tokenizer piece; a word start begins with a space


@dataclass(frozen=True)
class TurnRules:
    min_turn_s: float = 1.0  # FDB: speech spanning this long takes the turn...
    max_short_words: int = 3  # ...and so does speech of more words than this
    min_pause_s: float = 0.4  # shorter silences inside one speaker's speech are not pauses
    max_pause_s: float = 3.0  # a longer user silence the assistant leaves unanswered is a
    # missed turn, not a pause
    max_backchannel_s: float = 1.0  # shorter user speech over the assistant is a backchannel
    text_lead_s: float = 0.3  # the inner monologue may run this far ahead of the audio
    text_cover_s: float = 1.0  # speech farther than this from any text is "without text"


@dataclass(frozen=True)
class TurnEvent:
    kind: str  # one of TURN_KINDS
    user_start: float  # the user's speech this event is about
    user_end: float
    took_turn: bool  # the assistant has the turn after it (FDB's rule)
    latency: float | None  # user's end of speech -> assistant's onset, when it took the turn
    stop_latency: float | None = None  # interruption: user's onset -> assistant's stop
    response_s: float = 0.0  # how long the assistant's response spans
    words: int | None = None  # words in it, from the inner monologue (None: no monologue)


# --- segments --------------------------------------------------------------------------------


def total(segments: Iterable[Segment]) -> float:
    return float(sum(end - start for start, end in segments))


def merge(segments: Sequence[Segment], max_gap: float) -> list[Segment]:
    """Join segments separated by less than `max_gap` seconds."""
    merged: list[Segment] = []
    for start, end in segments:
        if merged and start - merged[-1][1] < max_gap:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def intersect(a: Sequence[Segment], b: Sequence[Segment]) -> list[Segment]:
    """Where both are active (both sorted and disjoint)."""
    out: list[Segment] = []
    i = j = 0
    while i < len(a) and j < len(b):
        start, end = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if start < end:
            out.append((start, end))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def clip(segments: Sequence[Segment], start: float, end: float) -> list[Segment]:
    return [(max(s, start), min(e, end)) for s, e in segments if e > start and s < end]


def speech_summary(assistant: Sequence[Segment], user: Sequence[Segment], duration: float) -> dict:
    """Speaking time per channel, overlap (both speak) and mutual silence, in seconds."""
    overlap = total(intersect(assistant, user))
    assistant_s, user_s = total(assistant), total(user)
    return {
        "duration_s": duration,
        "assistant_s": assistant_s,
        "user_s": user_s,
        "overlap_s": overlap,
        "silence_s": max(0.0, duration - assistant_s - user_s + overlap),
        "assistant_segments": len(assistant),
        "user_segments": len(user),
    }


# --- the turn rule ---------------------------------------------------------------------------


def count_words(
    pieces: Sequence[Piece] | None, start: float, end: float, lead: float
) -> int | None:
    """Words of the monologue emitted in [start - lead, end); None when there is no monologue."""
    if pieces is None:
        return None
    text = "".join(
        f" {p.text}" if _TOKEN_ID.fullmatch(p.text) else p.text
        for p in pieces
        if start - lead <= p.time < end
    )
    return len(text.split())


def takes_turn(span_s: float, words: int | None, rules: TurnRules) -> bool:
    return span_s >= rules.min_turn_s or (words is not None and words > rules.max_short_words)


def assistant_response(
    stretches: Sequence[Segment], pieces: Sequence[Piece] | None, rules: TurnRules
) -> tuple[bool, float, int | None]:
    """(takes the turn, span, words) of the assistant's speech `stretches` (possibly none)."""
    if not stretches:
        return False, 0.0, (0 if pieces is not None else None)
    start, end = stretches[0][0], stretches[-1][1]
    words = count_words(pieces, start, end, rules.text_lead_s)
    return takes_turn(end - start, words, rules), end - start, words


# --- turn-taking in any conversation ---------------------------------------------------------


def turn_events(
    user: Sequence[Segment],
    assistant: Sequence[Segment],
    pieces: Sequence[Piece] | None,
    duration: float,
    rules: TurnRules | None = None,
) -> list[TurnEvent]:
    """Classify every stretch of the user's speech by what the assistant did around it.

    Speech of one speaker separated by less than `min_pause_s` is one stretch. A user
    backchannel does not end the window in which the assistant answers the speech before it.
    For each user stretch, in this order:
    - it began while the assistant spoke and is shorter than `max_backchannel_s`: a user
      backchannel; took_turn says whether the assistant has the turn after it (speaks >= 1 s or
      > 3 words between its end and the user's next speech): here higher is better;
    - it began while the assistant spoke: an interruption; stop_latency is how long the assistant
      went on after the user's onset, latency how soon it answered after the user's end;
    - the user speaks again within `max_pause_s`, and not after the assistant had held the turn
      for `min_turn_s`: a pause; took_turn means the assistant cut in (lower is better), and the
      user's speech over that cut-in is not counted as an interruption;
    - otherwise: an end of turn; took_turn means the assistant answered, latency how soon.
    The assistant's response is its speech that starts after the user's onset, before the user's
    next onset, and is still going at (or starts after) the user's end; FDB clamps a negative
    latency (answering before the user finished) to 0, and so does this.
    """
    rules = rules or TurnRules()
    user_stretches = merge(user, rules.min_pause_s)
    stretches = merge(assistant, rules.min_pause_s)
    events = []
    over = [next((a for a in stretches if a[0] < s < a[1]), None) for s, _ in user_stretches]
    short = [e - s < rules.max_backchannel_s for s, e in user_stretches]
    cut_in: Segment | None = None  # the assistant's speech that cut into the user's last pause
    for i, (u_start, u_end) in enumerate(user_stretches):
        # the user's next onset, backchannels aside: they do not take the turn back
        next_onset = next(
            (s for j, (s, _) in enumerate(user_stretches) if j > i and not (over[j] and short[j])),
            None,
        )
        window_end = next_onset if next_onset is not None else duration
        talking = over[i]
        if cut_in is not None and cut_in[0] <= u_start < cut_in[1]:
            talking = None  # the user going on after a pause the assistant cut into
        cut_in = None
        if talking is not None and short[i]:
            following = [s for s, _ in user_stretches if s > u_start] + [duration]
            after = clip(stretches, u_end, following[0])
            took, span, words = assistant_response(after, pieces, rules)
            events.append(
                TurnEvent(USER_BACKCHANNEL, u_start, u_end, took, None, None, span, words)
            )
            continue
        response = [a for a in stretches if u_start < a[0] < window_end and a[1] > u_end]
        took, span, words = assistant_response(response, pieces, rules)
        latency = max(0.0, response[0][0] - u_end) if took else None
        if talking is not None:
            kind = INTERRUPTION
        elif (
            next_onset is not None
            and next_onset - u_end <= rules.max_pause_s
            and not (took and next_onset >= response[0][0] + rules.min_turn_s)
        ):
            kind = PAUSE
            if took:
                cut_in = (response[0][0], response[-1][1])
        elif not response and duration - u_end < rules.min_turn_s:
            continue  # the recording ends right after: the assistant had no time to answer
        else:
            kind = END_OF_TURN
        stop = talking[1] - u_start if talking is not None else None
        events.append(TurnEvent(kind, u_start, u_end, took, latency, stop, span, words))
    return events


def assistant_backchannels(
    assistant: Sequence[Segment], pieces: Sequence[Piece] | None, rules: TurnRules | None = None
) -> int:
    """Stretches of assistant speech too short to be a turn (< 1 s and at most 3 words)."""
    rules = rules or TurnRules()
    return sum(
        not assistant_response([stretch], pieces, rules)[0]
        for stretch in merge(assistant, rules.min_pause_s)
    )


def summarize_turns(events: Sequence[TurnEvent]) -> dict[str, dict[str, Any]]:
    """Per kind: count, turn-over rate (share with took_turn), latency and stop-latency figures."""
    summary = {}
    for kind in TURN_KINDS:
        chosen = [e for e in events if e.kind == kind]
        entry: dict[str, Any] = {
            "count": len(chosen),
            "turn_over_rate": mean_or_none([float(e.took_turn) for e in chosen]),
        }
        if kind in (END_OF_TURN, INTERRUPTION):
            entry.update(median_and_mean("latency", [e.latency for e in chosen]))
        if kind == INTERRUPTION:
            entry.update(median_and_mean("stop_latency", [e.stop_latency for e in chosen]))
            entry["stopped_in_time_rate"] = mean_or_none(
                [
                    float(
                        e.stop_latency is not None and e.stop_latency <= e.user_end - e.user_start
                    )
                    for e in chosen
                ]
            )
        summary[kind] = entry
    return summary


def events_as_dicts(events: Sequence[TurnEvent]) -> list[dict[str, Any]]:
    return [asdict(e) for e in events]


# --- small helpers ---------------------------------------------------------------------------


def mean_or_none(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def median_and_mean(name: str, values: Iterable[float | None]) -> dict[str, float | None]:
    present = [v for v in values if v is not None]
    return {
        f"{name}_median_s": float(np.median(present)) if present else None,
        f"{name}_mean_s": mean_or_none(present),
    }
