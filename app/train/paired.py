"""Two models' `train eval` reports compared request by request (`train eval --against`).

Paired on the same held-out dialogues, the two models' shared luck of the draw cancels: what is
left is the requests one got right and the other wrong, and McNemar's exact test says how
likely so lopsided a split is if neither model is better.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from model.errors import ConfigError


def paired(report: dict, other: dict) -> dict[str, Any]:
    """`report` against `other` request by request, on the requests both answered-or-not on
    the same held-out dialogues (same dialogue, same place): both right, only this one, only the
    other, both wrong, and McNemar's exact two-sided p for "neither is better" (how likely so
    lopsided a split of the requests they disagree on is by chance). Paired, the two models'
    shared luck of the draw cancels: on 96 dialogues two runs' answer_correct figures each
    spread ~0.03, as much as the differences checkpoints were chosen by."""

    def answers(rep: dict) -> dict[tuple[str, int], tuple[str, bool]]:
        return {
            (Path(dialogue["file"]).stem, k): (request["question"], request["answer_correct"])
            for dialogue in rep["dialogues"]
            for k, request in enumerate(dialogue["requests"])
            if "answer_correct" in request
        }

    asked, asked_other = answers(report), answers(other)
    shared = sorted(set(asked) & set(asked_other))
    if not shared or any(asked[key][0] != asked_other[key][0] for key in shared):
        raise ValueError("the two reports are not of the same held-out dialogues")
    mine = {key: asked[key][1] for key in shared}
    theirs = {key: asked_other[key][1] for key in shared}
    only_this = sum(mine[key] and not theirs[key] for key in shared)
    only_other = sum(theirs[key] and not mine[key] for key in shared)
    disagree = only_this + only_other
    tail = sum(math.comb(disagree, k) for k in range(min(only_this, only_other) + 1))
    return {
        "requests": len(shared),
        "both_right": sum(mine[key] and theirs[key] for key in shared),
        "only_this": only_this,
        "only_other": only_other,
        "both_wrong": sum(not mine[key] and not theirs[key] for key in shared),
        "p": min(1.0, 2 * tail / 2**disagree) if disagree else 1.0,
    }


def format_paired(comparison: dict[str, Any], other: Path) -> str:
    c = comparison
    shared = max(1, c["requests"])
    change = (c["only_this"] - c["only_other"]) / shared
    return (
        f"against {other}, request by request ({c['requests']} answered requests in both): "
        f"both right {c['both_right']}, only this one {c['only_this']}, only that one "
        f"{c['only_other']}, both wrong {c['both_wrong']}; answer_correct {change:+.3f}, "
        f"p = {c['p']:.3f} (McNemar, exact){'' if c['p'] < 0.05 else ': not a clear difference'}"
    )


def read_report(path: Path) -> dict:
    """A report of `train eval --json`, read before the evaluation: a wrong file is said at
    once, not after minutes of evaluating."""
    try:
        other = json.loads(path.read_text())
        paired(other, other)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(
            f"--against {path}: not a report of `antiphon train eval --json` ({error!r}); "
            "give a file that another eval wrote"
        ) from error
    return other
