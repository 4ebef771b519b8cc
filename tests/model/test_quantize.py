"""8-bit formats: int8 weights (Int8Linear) and 8-bit KV caches, against full precision."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from model import LM, LMState, SamplingParams, tiny_lm
from model.kvcache import KVCache, check_cache_format
from model.quantize import Int8Linear, quantize_lm_


def test_int8_linear_is_close_to_the_float_one() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(256, 96, bias=False)
    quantized = Int8Linear(linear)
    assert quantized.weight.dtype == torch.int8 and quantized.scales.shape == (96,)
    x = torch.randn(3, 5, 256)
    want, got = linear(x), quantized(x)
    assert got.shape == (3, 5, 96)
    # Per-channel int8: each weight is off by at most half a step (absmax / 254).
    step = linear.weight.abs().amax(dim=1) / 127
    bound = 0.5 * (x.abs() @ torch.ones(256, 96)) * step
    assert ((got - want).abs() <= bound + 1e-5).all()
    assert (got - want).abs().max() > 0  # it really is quantized


@pytest.mark.parametrize("fmt", ["int8", "float8"])
def test_8bit_cache_round_trip_is_within_its_precision(fmt: str) -> None:
    torch.manual_seed(1)
    cache = KVCache.create((2, 3, 8, 16), check_cache_format(fmt), torch.float32, "cpu")
    keys, values = 3 * torch.randn(2, 3, 2, 16), torch.randn(2, 3, 2, 16)
    slots = torch.tensor([[5, 6], [0, 1]])
    cache.write(slots, keys, values)
    read_keys, read_values = cache.read(torch.float32)
    assert cache.keys.dtype != torch.float32 and read_keys.dtype == torch.float32
    for written, read in ((keys, read_keys), (values, read_values)):
        stored = torch.stack([read[0, :, 5:7], read[1, :, 0:2]])
        absmax = written.abs().amax(dim=-1, keepdim=True)
        # int8: half a step of absmax / 127; float8 e4m3: 3 mantissa bits, 1/16 relative.
        tolerance = absmax / 254 if fmt == "int8" else absmax / 16
        assert ((stored - written).abs() <= tolerance + 1e-6).all()
    with pytest.raises(Exception, match="KV-cache format"):
        check_cache_format("int4")


def lockstep(full: LM, small: LM, frames: int, cache_format: str) -> tuple[list, LMState]:
    """Both LMs step greedily on the same user codes; the small one is given the full one's
    tokens after each frame, so both always see the same history and only the formats differ.
    Returns per frame (logits error relative to the logits' spread, same text token)."""
    fmt = check_cache_format(cache_format)
    full_state = full.init_state(1, SamplingParams.greedy())
    small_state = small.init_state(1, SamplingParams.greedy(), cache_format=fmt)
    g = torch.Generator().manual_seed(7)
    out = []
    for _ in range(frames):
        codes = torch.randint(0, full.config.card, (1, full.config.user_codebooks, 1), generator=g)
        a, b = full.step(codes, full_state), small.step(codes, small_state)
        error = (a.text_logits - b.text_logits).abs().max() / a.text_logits.std()
        out.append((float(error), bool(a.text == b.text)))
        small_state.tokens.copy_(full_state.tokens)
    return out, small_state


@pytest.mark.parametrize("variant", ["int8 weights", "int8 cache", "float8 cache"])
def test_quantized_lm_stays_close_to_full_precision(variant: str) -> None:
    torch.manual_seed(2)
    full = LM(tiny_lm()).eval()
    small = copy.deepcopy(full)
    if variant == "int8 weights":
        assert quantize_lm_(small) > 0
        assert not any(isinstance(m, nn.Linear) for m in small.modules())
    fmt = variant.split()[0] if "cache" in variant else "compute"
    frames, state = lockstep(full, small, 30, fmt)
    # The KV cache has a dtype of its own: int8 weights never make an int8 cache.
    want = {"compute": torch.float32, "int8": torch.int8, "float8": torch.float8_e4m3fn}[fmt]
    assert state.temporal.caches[0].keys.dtype == want
    errors = [e for e, _ in frames]
    assert 0 < max(errors) < 0.1, errors  # changed something, little (relative to the spread)
    assert sum(same for _, same in frames) >= 27  # greedy text tokens, near ties aside
