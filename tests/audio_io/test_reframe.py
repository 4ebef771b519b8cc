"""Mix-down, re-framing and block-wise resampling: sizes, no loss, block-wise equals whole."""

import numpy as np
import pytest
import soxr

from audio_io.reframe import Reframer, StreamResampler, to_mono

from .conftest import tone


def random_blocks(signal: np.ndarray, seed: int, largest: int = 5000) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    cuts = np.cumsum(rng.integers(1, largest, size=len(signal)))
    return np.split(signal, cuts[cuts < len(signal)])


def test_to_mono_shapes_and_copies() -> None:
    stereo = np.array([[0.2, 0.4], [-1.0, 1.0]], np.float32)
    np.testing.assert_allclose(to_mono(stereo), [0.3, 0.0])
    column = np.array([[0.5], [0.25]], np.float32)
    mono = to_mono(column)
    mono[0] = 9.0
    assert column[0, 0] == 0.5  # a copy, never a view of PortAudio's buffer
    assert to_mono(np.zeros(4, np.float64)).dtype == np.float32
    with pytest.raises(ValueError, match="shape"):
        to_mono(np.zeros((2, 2, 2)))


@pytest.mark.parametrize("seed", range(3))
def test_reframer_cuts_exact_frames_and_keeps_the_rest(seed: int) -> None:
    signal = np.arange(20000, dtype=np.float32)
    reframer = Reframer(1920)
    frames = [f for block in random_blocks(signal, seed) for f in reframer.push(block)]
    assert all(f.shape == (1920,) and f.dtype == np.float32 for f in frames)
    assert len(frames) == 20000 // 1920
    np.testing.assert_array_equal(np.concatenate(frames), signal[: len(frames) * 1920])
    assert reframer.pending == 20000 % 1920


def test_reframer_frames_do_not_alias_the_input() -> None:
    reframer = Reframer(4)
    block = np.arange(8, dtype=np.float32)
    frames = reframer.push(block)
    block[:] = -1
    np.testing.assert_array_equal(np.concatenate(frames), np.arange(8))
    assert reframer.push(np.zeros(3, np.float32)) == [] and reframer.pending == 3


@pytest.mark.parametrize(
    ("in_rate", "out_rate"), [(48000, 24000), (44100, 24000), (24000, 48000), (8000, 24000)]
)
def test_blockwise_resampling_equals_whole_signal(in_rate: int, out_rate: int) -> None:
    signal = tone(440, 1.0, in_rate) + tone(3000, 1.0, in_rate, amplitude=0.2)
    whole = soxr.resample(signal, in_rate, out_rate, quality="HQ")
    resampler = StreamResampler(in_rate, out_rate)
    parts = [resampler.process(block) for block in random_blocks(signal, seed=in_rate)]
    streamed = np.concatenate([*parts, resampler.flush()])
    assert len(streamed) == len(whole) == out_rate
    np.testing.assert_allclose(streamed, whole, atol=1e-5)
    # after flush the stream starts afresh: the same signal again gives the same output
    again = np.concatenate([resampler.process(signal), resampler.flush()])
    np.testing.assert_allclose(again, whole, atol=1e-5)


def test_equal_rates_pass_through() -> None:
    resampler = StreamResampler(24000, 24000)
    block = tone(440, 0.1, 24000)
    out = resampler.process(block)
    assert resampler.passthrough and out is not block
    np.testing.assert_array_equal(out, block)
    assert len(resampler.flush()) == 0
