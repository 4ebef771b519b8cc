"""The one timing summary: from FrameStats, from events.jsonl's frame events, and a remote's."""

from __future__ import annotations

import pytest

from app.core.events import FrameStats
from app.core.timing import COUNTERS, Timings, distribution


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
    timings.node_ms += [20.0] * 10
    timings.network_ms += [30.0] * 10
    summary = timings.summary(0.08, node="gpu-1")
    assert summary["node_ms"]["median"] == 20.0
    assert summary["network_share"] == pytest.approx(30.0 / 150.0)
    assert summary["node"] == "gpu-1"


def test_distribution() -> None:
    assert distribution([]) is None
    figures = distribution([1.0, 2.0, 3.0])
    assert figures == {"mean": 2.0, "median": 2.0, "p90": pytest.approx(2.8),
                       "p99": pytest.approx(2.98), "max": 3.0}  # fmt: skip
