"""Held-out dialogues cut into Full-Duplex-Bench samples read back by `antiphon eval`'s loader
with the right category, span and annotations."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from app.eval.folders import find_conversations, load
from app.train.fdbsets import fdb_samples, write_fdb_samples

RATE = 24000


def turn(kind, start, end, question="q", pause=None, interrupted_at=None):
    return {
        "kind": kind,
        "user_start": start,
        "user_end": end,
        "pause": pause,
        "interrupted_at": interrupted_at,
        "turn": {"question": question},
    }


DESCRIPTION: dict[str, Any] = {
    "duration": 20.0,
    "turns": [
        turn("answer", 0.5, 2.0, "what is two plus three"),
        turn("pause", 5.0, 8.0, "count from one", pause=(6.0, 7.0)),
        turn("interrupt", 11.0, 12.5, "count to nine", interrupted_at=15.0),
        turn("stop", 15.0, 16.0, "stop"),
    ],
}


def test_each_request_becomes_one_sample_of_its_category():
    samples = fdb_samples(DESCRIPTION)
    assert [(c, s, round(a, 2), round(b, 2)) for c, s, a, b, _ in samples] == [
        ("smooth_turn_taking", "0", 0.5, 5.0),  # to the next request
        ("pause_handling", "1", 5.0, 7.0),  # to the pause's end
        ("user_interruption", "2", 11.0, 20.0),  # past the "stop" to the end
    ]


def test_written_samples_read_back_with_their_annotations(tmp_path):
    t = np.arange(int(DESCRIPTION["duration"] * RATE)) / RATE
    user = (0.1 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    assistant = (0.1 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    assert write_fdb_samples(tmp_path, "eval_000007", user, assistant, DESCRIPTION, RATE) == 3

    found, failed = find_conversations([tmp_path])
    assert not failed
    by_category = {str(item.category): item for item in found}
    assert sorted(by_category) == ["pause_handling", "smooth_turn_taking", "user_interruption"]

    turn_taking = load(by_category["smooth_turn_taking"])
    assert len(turn_taking.user) == int(4.5 * RATE)
    assert turn_taking.user_end == pytest.approx(1.5)  # relative to the sample's start
    # the sample is cut from the same span of both channels (16-bit WAV: 1e-4)
    span = slice(int(0.5 * RATE), int(5.0 * RATE))
    np.testing.assert_allclose(turn_taking.user, user[span], atol=1e-4)
    np.testing.assert_allclose(turn_taking.assistant, assistant[span], atol=1e-4)

    interruption = load(by_category["user_interruption"])
    assert interruption.interruption == pytest.approx((4.0, 5.0))
    assert not interruption.warnings
