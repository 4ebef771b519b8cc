"""The speaker's jitter buffer: pre-roll, underrun, overrun (drop oldest), threads."""

import threading

import numpy as np
import pytest

from audio_io.jitter import JitterBuffer

F = 100  # frame size for these tests


def frame(value: float) -> np.ndarray:
    return np.full(F, value, np.float32)


def test_silence_until_preroll_is_reached() -> None:
    buffer = JitterBuffer(F, preroll_frames=2, max_frames=4)
    buffer.write(frame(1))
    np.testing.assert_array_equal(buffer.read(F), 0.0)
    assert buffer.buffered_samples == F  # nothing consumed while pre-rolling
    buffer.write(frame(2))
    np.testing.assert_array_equal(buffer.read(2 * F), np.r_[frame(1), frame(2)])
    stats = buffer.stats()
    assert (stats.underruns, stats.played_samples, stats.silence_samples) == (0, 2 * F, F)


def test_underrun_pads_with_silence_counts_and_prerolls_again() -> None:
    buffer = JitterBuffer(F, preroll_frames=1, max_frames=4)
    buffer.write(frame(1))
    out = buffer.read(F + F // 2)
    np.testing.assert_array_equal(out, np.r_[frame(1), np.zeros(F // 2)])
    assert buffer.underruns == 1
    buffer.write(frame(2)[: F // 2])  # below the pre-roll again: still silence, no new underrun
    np.testing.assert_array_equal(buffer.read(F // 2), 0.0)
    assert buffer.underruns == 1
    buffer.write(frame(3)[: F // 2])
    np.testing.assert_array_equal(buffer.read(F), np.r_[frame(2)[: F // 2], frame(3)[: F // 2]])


def test_overrun_drops_the_oldest_down_to_preroll() -> None:
    buffer = JitterBuffer(F, preroll_frames=1, max_frames=4)
    for value in range(5):  # the fifth frame exceeds max_frames
        buffer.write(frame(value))
    assert buffer.overruns == 1 and buffer.dropped_samples == 4 * F
    assert buffer.buffered_samples == F
    buffer.write(frame(5))
    np.testing.assert_array_equal(buffer.read(2 * F), np.r_[frame(4), frame(5)])  # newest kept


def test_latency_stays_bounded_when_the_writer_runs_ahead() -> None:
    rng = np.random.default_rng(0)
    buffer = JitterBuffer(F, preroll_frames=1, max_frames=3)
    written = 0
    for _ in range(500):
        for _ in range(rng.integers(0, 4)):  # bursts of 0 to 3 frames, 1.5 per read on average
            buffer.write(frame(1))
            written += F
            assert buffer.buffered_samples <= 3 * F
        buffer.read(F)
    stats = buffer.stats()
    assert stats.overruns > 0
    assert stats.played_samples + stats.dropped_samples + stats.buffered_samples == written


def test_a_write_larger_than_the_buffer_keeps_its_newest_part() -> None:
    buffer = JitterBuffer(F, preroll_frames=1, max_frames=2)
    ramp = np.arange(1, 10 * F + 1, dtype=np.float32)
    buffer.write(ramp)
    assert buffer.buffered_samples == F and buffer.dropped_samples == 9 * F
    np.testing.assert_array_equal(buffer.read(F), ramp[-F:])


def test_clear_forgets_the_audio_and_prerolls_again() -> None:
    buffer = JitterBuffer(F, preroll_frames=1, max_frames=4)
    buffer.write(frame(1))
    buffer.write(frame(2))
    buffer.read(F)
    buffer.clear()
    assert buffer.buffered_samples == 0
    buffer.write(frame(3)[: F // 2])
    np.testing.assert_array_equal(buffer.read(F // 2), 0.0)  # pre-rolling, not an underrun
    assert buffer.underruns == 0 and buffer.played_samples == F


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError):
        JitterBuffer(0)
    with pytest.raises(ValueError):
        JitterBuffer(F, preroll_frames=5, max_frames=4)


def test_concurrent_writer_and_reader_lose_and_reorder_nothing() -> None:
    # no pre-roll, so the reader drains everything; large, so no overrun drops
    buffer = JitterBuffer(F, preroll_frames=0, max_frames=10_000)
    total = 200_000
    ramp = np.arange(1, total + 1, dtype=np.float32)  # nonzero, so silence is told apart
    played: list[np.ndarray] = []
    done = threading.Event()

    def writer() -> None:
        rng = np.random.default_rng(1)
        position = 0
        while position < total:
            size = int(rng.integers(1, 700))
            buffer.write(ramp[position : position + size])
            position += size
        done.set()

    def reader() -> None:
        rng = np.random.default_rng(2)
        while not done.is_set() or buffer.buffered_samples:
            played.append(buffer.read(int(rng.integers(1, 700))))

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert not any(thread.is_alive() for thread in threads)
    out = np.concatenate(played)
    np.testing.assert_array_equal(out[out != 0], ramp)
    assert buffer.overruns == 0 and buffer.played_samples == total
