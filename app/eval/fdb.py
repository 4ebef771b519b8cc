"""Full-Duplex-Bench (FDB) v1's four categories, scored as its evaluation scripts score them,
with the turn rule of `app.eval.turns`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from app.core.files import (  # noqa: F401  (the category names are part of this module's API)
    BACKCHANNEL,
    FDB_CATEGORIES,
    PAUSE_HANDLING,
    SMOOTH_TURN_TAKING,
    USER_INTERRUPTION,
)

from .turns import (
    Piece,
    Segment,
    TurnRules,
    assistant_response,
    clip,
    count_words,
    mean_or_none,
    median_and_mean,
    merge,
)


def fdb_pause_handling(
    assistant: Sequence[Segment], pieces: Sequence[Piece] | None, rules: TurnRules | None = None
) -> dict[str, Any]:
    """TOR over the whole output: did the assistant take the turn at all (lower is better)."""
    rules = rules or TurnRules()
    took, span, words = assistant_response(assistant, pieces, rules)
    return {"turn_over": int(took), "response_s": span, "words": words}


def fdb_backchannel(
    assistant: Sequence[Segment],
    pieces: Sequence[Piece] | None,
    duration: float,
    rules: TurnRules | None = None,
) -> dict[str, Any]:
    """FDB's backchannel rule per VAD segment of the output.

    A segment under 1 s with at most 2 words is a backchannel; any other is a turn. TOR is 1
    when any segment is a turn; frequency is backchannels per second of the recording.
    """
    rules = rules or TurnRules()
    turns = backchannels = 0
    for start, end in assistant:
        words = count_words(pieces, start, end, rules.text_lead_s)
        # FDB's chain (longer than 3 s; else more than 3 words; else 1 s or more; else more
        # than 2 words) comes down to this
        is_turn = end - start >= rules.min_turn_s or (words is not None and words > 2)
        turns += is_turn
        backchannels += not is_turn
    return {
        "turn_over": int(turns > 0),
        "backchannels": backchannels,
        "backchannel_per_s": backchannels / duration if duration > 0 else None,
    }


def fdb_smooth_turn_taking(
    assistant: Sequence[Segment],
    pieces: Sequence[Piece] | None,
    user_end: float,
    rules: TurnRules | None = None,
) -> dict[str, Any]:
    """TOR over the whole output (higher is better); latency from `user_end` to its first onset."""
    rules = rules or TurnRules()
    took, span, words = assistant_response(assistant, pieces, rules)
    latency = max(0.0, assistant[0][0] - user_end) if took else None
    return {"turn_over": int(took), "latency_s": latency, "user_end_s": user_end, "words": words}


def fdb_user_interruption(
    assistant: Sequence[Segment],
    pieces: Sequence[Piece] | None,
    interruption: Segment,
    rules: TurnRules | None = None,
) -> dict[str, Any]:
    """After the user's interruption [start, end]: TOR and latency of the output after `end`
    (FDB crops the output there, so speech still going counts, at latency 0), and how long the
    assistant went on speaking after the interruption began (stop latency; None if it was silent
    at that moment)."""
    rules = rules or TurnRules()
    start, end = interruption
    after = clip(assistant, end, math.inf)
    took, span, words = assistant_response(after, pieces, rules)
    talking = next((a for a in merge(assistant, rules.min_pause_s) if a[0] <= start < a[1]), None)
    return {
        "turn_over": int(took),
        "latency_s": max(0.0, after[0][0] - end) if took else None,
        "stop_latency_s": talking[1] - start if talking is not None else None,
        "interruption_s": [start, end],
        "words": words,
    }


def summarize_fdb(category: str, results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """FDB's aggregate for one category: means over samples, latency over those with TOR 1."""
    summary: dict[str, Any] = {
        "samples": len(results),
        "turn_over_rate": mean_or_none([r["turn_over"] for r in results]),
    }
    if category in (SMOOTH_TURN_TAKING, USER_INTERRUPTION):
        latencies = [r["latency_s"] for r in results if r["latency_s"] is not None]
        summary["latency_mean_s"] = mean_or_none(latencies)
    if category == USER_INTERRUPTION:
        summary.update(median_and_mean("stop_latency", [r["stop_latency_s"] for r in results]))
    if category == BACKCHANNEL:
        summary["backchannel_per_s_mean"] = mean_or_none(
            [r["backchannel_per_s"] for r in results if r["backchannel_per_s"] is not None]
        )
    return summary
