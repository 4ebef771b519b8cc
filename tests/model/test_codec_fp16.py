"""fp16 codec weights (`store_codec_fp16_`): fbgemm's kernel equals fp16 weights multiplied in
fp32, codes agree with fp32, streaming equals the whole signal, and `auto` picks fp16 on an x86
CPU without native bf16."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import model.quantize as quantize
from model.codec import Codec
from model.config import mimi, tiny_mimi
from model.conv import CausalConv1d, CausalConvTranspose1d
from model.packed import PackedLinear, has_fp16_kernel
from model.quantize import Fp16Linear, codec_weights, store_codec_fp16_, store_codec_weights_
from tests.model.test_codec import assert_compiles_as_eager, distinct_codes, speechlike
from tests.model.test_codec_bf16 import _stream

needs_fbgemm = pytest.mark.skipif(not has_fp16_kernel(), reason="no fbgemm in this torch build")


@pytest.fixture
def every_conv_in_fp16(monkeypatch) -> None:
    """The tiny codec's convs are all small: put them in fp16 too, to test their paths."""
    monkeypatch.setattr(quantize, "BF16_MIN_CONV_WEIGHTS", 0)


@needs_fbgemm
def test_the_fp16_kernel_is_fp16_weights_multiplied_in_fp32() -> None:
    torch.manual_seed(0)
    weight, bias = 0.05 * torch.randn(96, 256), torch.randn(96)
    packed = PackedLinear.fp16(weight, bias)
    assert packed is not None
    x = torch.randn(3, 2, 256)
    got = packed(x)
    assert got.dtype == torch.float32 and got.shape == (3, 2, 96)
    # Only the weight rounds (to 11 significant bits); the bias and the sums stay fp32.
    torch.testing.assert_close(got, F.linear(x, weight.half().float(), bias), atol=1e-6, rtol=0)
    exact = F.linear(x, weight, bias)
    assert 0 < (got - exact).norm() / exact.norm() < 2**-10


@pytest.mark.parametrize("packed", [True, False])
def test_fp16_linear_is_close_to_the_float_one(packed: bool) -> None:
    if packed and not has_fp16_kernel():
        pytest.skip("no fbgemm in this torch build")
    torch.manual_seed(0)
    linear = nn.Linear(256, 96, bias=False)
    stored = Fp16Linear(linear)
    if not packed:
        stored.packed = None  # the plain F.linear path (no fbgemm, or a GPU)
    assert stored.weight.dtype == torch.float16 and not list(stored.parameters())
    x = torch.randn(3, 2, 256)
    want, got = linear(x), stored(x)
    assert got.dtype == torch.float32 and got.shape == (3, 2, 96)
    assert 0 < (got - want).norm() / want.norm() < 2**-10  # bf16 (test_codec_bf16.py): 2^-7


def test_what_goes_fp16(fp32_codec, every_conv_in_fp16) -> None:
    codec = copy.deepcopy(fp32_codec)
    count = store_codec_fp16_(codec)
    linears = [m for m in codec.modules() if isinstance(m, Fp16Linear)]
    assert len(linears) == 2 * 4 * tiny_mimi().transformer.num_layers
    assert not any(isinstance(m, nn.Linear) for m in codec.modules())
    convs = [m for m in codec.modules() if isinstance(m, CausalConv1d | CausalConvTranspose1d)]
    ungrouped = [
        m for m in convs if (m.conv if isinstance(m, CausalConv1d) else m.convtr).groups == 1
    ]
    assert count == len(linears) + len(ungrouped)
    # Convs keep fp32 weights holding fp16's values (every path computes the same numbers).
    for module in ungrouped:
        weight = (module.conv if isinstance(module, CausalConv1d) else module.convtr).weight
        assert weight.dtype == torch.float32 and torch.equal(weight, weight.half().float())
        assert (module.packed is not None) == has_fp16_kernel()
    assert {p.dtype for p in codec.parameters()} == {torch.float32}
    assert codec.dtype == torch.float32
    with pytest.raises(ValueError, match="float32 codec"):
        store_codec_fp16_(copy.deepcopy(fp32_codec).to(torch.bfloat16))


def test_fp16_codes_agree_with_fp32(fp32_codec, every_conv_in_fp16) -> None:
    codec = copy.deepcopy(fp32_codec)
    store_codec_weights_(codec, "float16")
    pcm = speechlike(2, 24, codec.frame_size, seed=5)
    with torch.no_grad():
        want_codes, want_audio = _stream(fp32_codec, pcm)
        codes, audio = _stream(codec, pcm)
    assert min(distinct_codes(want_codes)) >= 12  # of 48 vectors: codes really vary
    agree = (codes == want_codes).float().mean(dim=(0, 2))  # per codebook
    # Measured with every conv and linear in fp16: 94-98% per codebook, the audio 4e-4 from
    # fp32's; bf16 in the same places (encoder's convs too): 50-81%, 5e-3.
    assert agree.min() >= 0.9, agree
    error = (audio - want_audio).norm() / want_audio.norm()
    assert 0 < error < 2e-3, error


def test_fp16_streaming_equals_the_whole_signal(fp32_codec, every_conv_in_fp16) -> None:
    codec = copy.deepcopy(fp32_codec)
    store_codec_fp16_(codec)
    pcm = speechlike(2, 3 * codec.config.transformer.context, codec.frame_size, seed=3)
    with torch.no_grad():
        codes, audio = _stream(codec, pcm)
        assert torch.equal(codes, codec.encode(pcm))
        torch.testing.assert_close(audio, codec.decode(codes), atol=1e-5, rtol=0)


@needs_fbgemm
def test_fp16_streaming_compiles_as_one_graph(fp32_codec, every_conv_in_fp16) -> None:
    """torch.compile cannot hold fbgemm's packed weights: a compiled frame calls them through
    the `antiphon::packed_linear` custom op, by key, and computes what eager does."""
    codec = copy.deepcopy(fp32_codec)
    store_codec_fp16_(codec)
    assert_compiles_as_eager(codec)


@needs_fbgemm
def test_one_compiled_graph_serves_every_packed_weight_and_their_copies() -> None:
    """The packed weight's key is a graph input: twelve modules, one graph (a constant key
    would recompile for each and fail at dynamo's limit of 8); a deepcopy or an unpickled copy
    has a key of its own and still computes after the original is gone."""
    import gc
    import pickle

    torch._dynamo.reset()
    step = torch.compile(
        lambda m, x: m(x) * 2, fullgraph=True, dynamic=False, backend="aot_eager"
    )  # fmt: skip
    x = torch.randn(2, 32)
    modules = [Fp16Linear(nn.Linear(32, 64, bias=False)) for _ in range(12)]
    for module in modules:
        assert torch.equal(step(module, x), module(x) * 2)
    copied = copy.deepcopy(modules[0])
    assert copied.packed is not None and modules[0].packed is not None
    assert int(copied.packed.key) != int(modules[0].packed.key)
    want = modules[0](x)
    del modules[0]
    gc.collect()
    assert torch.equal(step(copied, x), want * 2)
    assert torch.equal(step(pickle.loads(pickle.dumps(copied)), x), want * 2)


def test_auto_is_fp16_on_an_x86_cpu_without_native_bf16(monkeypatch) -> None:
    with torch.device("meta"):  # shapes only: no weights to fill
        released, tiny = Codec(mimi()), Codec(tiny_mimi())
    cpu = torch.device("cpu")
    monkeypatch.setattr(quantize, "native_bf16_cpu", lambda: False)
    monkeypatch.setattr(quantize, "has_fp16_kernel", lambda: True)
    assert codec_weights("auto", cpu, released) == "float16"
    assert codec_weights("auto", cpu, tiny) == "float32"  # a small codec stays fp32
    assert codec_weights("auto", torch.device("cuda"), released) == "float32"  # unmeasured
    monkeypatch.setattr(quantize, "has_fp16_kernel", lambda: False)  # an ARM build
    assert codec_weights("auto", cpu, released) == "float32"
    monkeypatch.setattr(quantize, "native_bf16_cpu", lambda: True)
    assert codec_weights("auto", cpu, released) == "bfloat16"
    assert codec_weights("float16", cpu, tiny) == "float16"
