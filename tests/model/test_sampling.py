"""Sampling: the right distribution, top-k and temperature per slot, greedy, determinism."""

from __future__ import annotations

import pytest
import torch

from model.errors import ConfigError
from model.sampling import SamplingParams, SamplingState, sample, uniform_noise


def _draw(logits: torch.Tensor, temperature: float, top_k: int, draws: int, seed: int = 0):
    """Sample `draws` times from one row of logits, advancing the counter like frames do."""
    B = draws
    rows = logits.expand(B, -1)
    return sample(
        rows,
        temperature=torch.full((B,), temperature),
        top_k=torch.full((B,), top_k, dtype=torch.long),
        rank=torch.arange(logits.shape[1]),
        seed=torch.full((B,), seed, dtype=torch.long),
        counter=torch.arange(B),
        stream=0,
    )


def test_samples_follow_the_tempered_distribution() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 0.5]])
    tokens = _draw(logits, temperature=0.8, top_k=0, draws=20_000)
    freq = torch.bincount(tokens, minlength=5).float() / tokens.numel()
    expected = torch.softmax(logits[0] / 0.8, dim=-1)
    torch.testing.assert_close(freq, expected, atol=0.012, rtol=0)


def test_top_k_never_draws_outside_the_k_best() -> None:
    logits = torch.tensor([[0.1, 3.0, 0.2, 2.9, 0.0, 2.8]])
    tokens = _draw(logits, temperature=5.0, top_k=2, draws=4000)
    assert set(tokens.tolist()) == {1, 3}


def test_temperature_zero_is_greedy_and_top_k_is_per_slot() -> None:
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    temperature = torch.tensor([0.0, 1.0, 1.0])
    top_k = torch.tensor([5, 1, 0])  # slot 1: top-1 is greedy too
    tokens = sample(
        logits,
        temperature,
        top_k,
        torch.arange(50),
        torch.zeros(3, dtype=torch.long),
        torch.zeros(3, dtype=torch.long),
        stream=0,
    )
    assert tokens[0] == logits[0].argmax() and tokens[1] == logits[1].argmax()


def test_noise_depends_only_on_seed_counter_stream_and_token() -> None:
    ids = torch.arange(1000)[None].expand(2, -1)
    a = uniform_noise(torch.tensor([1, 2]), torch.tensor([7, 7]), 3, ids)
    b = uniform_noise(torch.tensor([1, 9]), torch.tensor([7, 0]), 3, ids)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[1], b[1])
    assert not torch.equal(a, uniform_noise(torch.tensor([1, 2]), torch.tensor([7, 7]), 4, ids))
    assert (a > 0).all() and (a < 1).all()
    assert abs(a.mean().item() - 0.5) < 0.03


def test_top_k_size_is_fixed_when_the_state_is_created() -> None:
    # By default every request is served exactly: the candidates are the whole vocabulary.
    state = SamplingState.create(2, SamplingParams(text_top_k=25), "cpu", vocabulary=(100, 64))
    state.set(1, SamplingParams(text_top_k=40, audio_top_k=0))
    state.set(0, SamplingParams(text_top_k=10_000))  # more than the vocabulary: no cut
    assert state.text_rank.shape == (100,) and state.audio_rank.shape == (64,)
    assert state.text_top_k.tolist() == [10_000, 40]
    # A bound makes each draw cheaper and refuses what it cannot serve, shapes unchanged.
    params = SamplingParams(text_top_k=25, audio_top_k=5)
    bounded = SamplingState.create(2, params, "cpu", vocabulary=(100, 64), max_top_k=30)
    assert bounded.text_rank.shape == (30,) and bounded.audio_rank.shape == (30,)
    bounded.set(1, SamplingParams(text_top_k=30, audio_top_k=5))
    for refused in (SamplingParams(text_top_k=40), SamplingParams(audio_top_k=0)):
        with pytest.raises(ConfigError, match="at most 30"):
            bounded.set(0, refused)
    assert bounded.text_top_k.tolist() == [25, 30]  # a refused request changes nothing
    with pytest.raises(ConfigError, match="at most 30"):  # nor does the default, when too big
        SamplingState.create(1, SamplingParams(), "cpu", vocabulary=(100, 64), max_top_k=30)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(text_temperature=-1.0)


def test_any_integer_seed_is_accepted_and_bad_values_are_config_errors() -> None:
    from model.errors import ConfigError

    state = SamplingState.create(1, SamplingParams(seed=2**70 + 5), "cpu", vocabulary=(10, 10))
    state.set(0, SamplingParams(seed=-3))
    assert 0 <= int(state.seed[0]) < 2**32
    with pytest.raises(ConfigError, match="top-k"):
        SamplingParams(text_top_k=-3)
