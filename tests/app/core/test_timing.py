"""The one timing summary: from FrameStats, from events.jsonl's frame events, and a remote's."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from app.core.events import FrameStats
from app.core.timing import COUNTERS, KEPT, Series, Timings, distribution


def _stats() -> list[FrameStats]:
    return [
        FrameStats(t * 0.08, t, 1.0, 2.0, 1.0, ms, ms / 80, underruns=t // 5, latency_ms=150.0)
        for t, ms in enumerate([4.0] * 9 + [100.0])
    ]


def test_summary_of_frame_stats() -> None:
    summary = Timings.of(_stats()).summary(0.08, wall_s=1.6)
    assert summary["frames"] == 10 and summary["frame_ms"] == pytest.approx(80.0)
    assert summary["compute_ms"]["median"] == 4.0
    assert 4.0 < summary["compute_ms"]["p99"] <= 100.0 == summary["compute_ms"]["max"]
    assert summary["real_time_factor"] == pytest.approx(0.05)
    assert summary["frames_slower_than_real_time"] == 1
    assert (summary["median_encode_ms"], summary["median_lm_ms"]) == (1.0, 2.0)
    assert summary["underruns"] == 1  # a running total: the largest value
    assert summary["latency_ms"]["median"] == 150.0
    assert summary["wall_real_time_factor"] == pytest.approx(2.0)
    assert "node_ms" not in summary and "network_ms" not in summary
    assert Timings().summary(0.08) == {"frames": 0}


def test_events_give_the_same_summary_as_the_frames_they_came_from() -> None:
    stats = _stats()
    events = [frame.to_dict() for frame in stats]
    events[3]["compute_ms"] = "?"  # a damaged field costs that figure only
    from_events = Timings.from_events(events).summary(0.08)
    assert from_events["frames"] == 9
    assert from_events["underruns"] == Timings.of(stats).summary(0.08)["underruns"]
    assert set(from_events) == set(Timings.of(stats).summary(0.08))
    assert set(COUNTERS) <= set(from_events)


def test_a_counter_that_is_not_a_number_is_left_out() -> None:
    events = [frame.to_dict() for frame in _stats()]
    events[-1]["underruns"] = "lots"  # the docstring's promise holds for counters too
    events[-2]["xruns"] = None
    events[-3]["overruns"] = [1]
    summary = Timings.from_events(events).summary(0.08)
    assert summary["frames"] == 10
    assert summary["underruns"] == 1  # frame 8's 8 // 5, the largest number left
    assert summary["xruns"] == summary["overruns"] == 0


def test_a_remote_session_adds_node_and_network_figures() -> None:
    timings = Timings.of(_stats())
    timings.node_ms.extend([20.0] * 10)
    timings.network_ms.extend([30.0] * 10)
    summary = timings.summary(0.08, node="gpu-1")
    assert summary["node_ms"]["median"] == 20.0
    assert summary["network_share"] == pytest.approx(30.0 / 150.0)
    assert summary["node"] == "gpu-1"


def test_distribution() -> None:
    assert distribution([]) is None
    figures = distribution([1.0, 2.0, 3.0])
    assert figures == {"mean": 2.0, "median": 2.0, "p90": pytest.approx(2.8),
                       "p99": pytest.approx(2.98), "max": 3.0}  # fmt: skip


def _frames(timings: Timings, computes: np.ndarray) -> None:
    """Frames as the serving node adds them: four compute figures and node_ms."""
    for compute in computes.tolist():
        timings.add(compute, compute / 4, compute / 2, compute / 4)
        timings.node_ms.append(compute + 3.0)


def _computes(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).gamma(9.0, 5.0, count)  # ms: median ~43, a tail past 80


def test_a_long_conversation_holds_no_more_than_a_short_one() -> None:
    """Issue 13: the soak's node grew ~1.4 MB a minute, five floats per frame and session kept
    for the session's life. 53 minutes of frames now cost what 11 minutes do."""
    computes = _computes(40_000, 13)
    tracemalloc.start()
    try:
        timings = Timings()
        _frames(timings, computes[: 2 * KEPT])
        after_minutes = tracemalloc.get_traced_memory()[0]
        _frames(timings, computes[2 * KEPT :])
        after_hours = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert timings.frames == 40_000
    held = 5 * KEPT * 8  # five figures of KEPT doubles at most
    assert after_hours < 1.5 * held  # lists of floats held ~10 MB
    assert after_hours - after_minutes < 0.5 * held
    assert all(len(s.kept()) <= KEPT for s in (timings.compute_ms, timings.node_ms))


def test_a_long_summary_is_exact_where_it_can_be_and_close_elsewhere() -> None:
    computes = _computes(20 * KEPT, 7)
    timings = Timings()
    _frames(timings, computes)
    summary = timings.summary(0.08)
    assert summary["frames"] == 20 * KEPT
    assert summary["compute_ms"]["mean"] == pytest.approx(computes.mean(), rel=1e-9)
    assert summary["compute_ms"]["max"] == computes.max()
    assert summary["node_ms"]["max"] == computes.max() + 3.0
    for name, q, within in (("median", 50, 0.02), ("p90", 90, 0.02), ("p99", 99, 0.06)):
        exact = np.percentile(computes, q)
        assert summary["compute_ms"][name] == pytest.approx(exact, rel=within), name
    assert summary["frames_slower_than_real_time"] == int((computes > 80.0).sum())
    assert timings.compute_ms.count_above(60.5) == pytest.approx((computes > 60.5).sum(), rel=0.1)


def test_a_series_keeps_an_even_sample_and_exact_totals() -> None:
    series = Series(range(10), kept=4)
    assert series.kept().tolist() == [0, 4, 8] and series.stride == 4  # multiples of 4
    assert (len(series), series.total, series.maximum) == (10, 45, 9)
    short = [3.0, 1.0, 4.0, 1.0, 5.0]
    assert Series(short).distribution() == distribution(short)  # up to KEPT: all of them
    assert Series(short).count_above(2.0) == 3
    edges = Series([0.0, 1.0, 1.5, 2.0, 2.01, 5000.0], kept=2)  # a sample of 2: counts used
    assert [edges.count_above(t) for t in (0, 1, 2, 1000)] == [5, 4, 2, 1]
    assert Series().distribution() is None and not Series()
