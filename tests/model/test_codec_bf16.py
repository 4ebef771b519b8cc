"""bf16 codec weights (`store_codec_bf16_`): close to fp32, streaming as the whole signal, the
streaming state kept in fp32, and the "auto" choice by the CPU's flags."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

import model.quantize as quantize
from model.codec import Codec
from model.config import mimi, tiny_mimi
from model.conv import ConvTransposeState
from model.packed import has_fp16_kernel
from model.quantize import Bf16Linear, codec_weights, native_bf16_cpu, store_codec_bf16_
from tests.model.test_codec import assert_compiles_as_eager, distinct_codes, speechlike


@pytest.fixture
def every_conv_in_bf16(monkeypatch) -> None:
    """The tiny codec's convs are all small: put them in bf16 too, to test their paths."""
    monkeypatch.setattr(quantize, "BF16_MIN_CONV_WEIGHTS", 0)


def _stream(codec: Codec, pcm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    enc, dec = codec.init_encoder_state(pcm.shape[0]), codec.init_decoder_state(pcm.shape[0])
    codes, audio = [], []
    for frame in pcm.split(codec.frame_size, dim=2):
        codes.append(codec.encode_step(frame, enc))
        audio.append(codec.decode_step(codes[-1], dec))
    return torch.cat(codes, dim=2), torch.cat(audio, dim=2)


@pytest.mark.parametrize("packed", [True, False])
def test_bf16_linear_is_close_to_the_float_one(packed: bool) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(256, 96, bias=False)
    stored = Bf16Linear(linear)
    if not packed:
        stored.packed = None  # the plain F.linear path (a CPU without oneDNN, or a GPU)
    assert stored.weight.dtype == torch.bfloat16 and not list(stored.parameters())
    x = torch.randn(3, 2, 256)
    want, got = linear(x), stored(x)
    assert got.dtype == torch.float32 and got.shape == (3, 2, 96)
    # Inputs, weights and outputs each round to 8 significant bits: 2^-9 relative each.
    assert (got - want).norm() / want.norm() < 2**-7
    assert (got - want).abs().max() > 0  # it really is bf16


def test_large_weights_go_bf16_and_the_rest_stays_fp32(fp32_codec) -> None:
    codec = copy.deepcopy(fp32_codec)
    count = store_codec_bf16_(codec)
    linears = [m for m in codec.modules() if isinstance(m, Bf16Linear)]
    assert count == len(linears) == 2 * 4 * tiny_mimi().transformer.num_layers
    assert not any(isinstance(m, nn.Linear) for m in codec.modules())
    # Norms, biases, codebooks stay fp32; the parameters say so, and so does the state.
    assert {p.dtype for p in codec.parameters()} == {torch.float32}
    assert codec.dtype == torch.float32
    enc = codec.init_encoder_state(1)
    assert enc.seanet.convs[-1].history.dtype == torch.float32
    assert enc.transformer.caches[0].keys.dtype == torch.float32
    with pytest.raises(ValueError, match="float32 codec"):
        store_codec_bf16_(copy.deepcopy(fp32_codec).to(torch.bfloat16))


def _conv_dtypes(module: nn.Module) -> set[torch.dtype]:
    convs = [m for m in module.modules() if isinstance(m, nn.Conv1d | nn.ConvTranspose1d)]
    return {c.weight.dtype for c in convs if c.groups == 1}


def test_the_encoder_convs_stay_fp32_unless_asked(fp32_codec, every_conv_in_bf16) -> None:
    codec = copy.deepcopy(fp32_codec)
    store_codec_bf16_(codec)
    assert _conv_dtypes(codec.decoder) == {torch.bfloat16}
    assert _conv_dtypes(codec.encoder) == _conv_dtypes(codec.downsample) == {torch.float32}
    codec = copy.deepcopy(fp32_codec)
    store_codec_bf16_(codec, encoder_convs=True)
    assert _conv_dtypes(codec.encoder) == _conv_dtypes(codec.downsample) == {torch.bfloat16}


def test_every_conv_path_in_bf16_keeps_its_state_in_fp32(fp32_codec, every_conv_in_bf16) -> None:
    codec = copy.deepcopy(fp32_codec)
    store_codec_bf16_(codec, encoder_convs=True)
    convs = [m for m in codec.modules() if isinstance(m, nn.Conv1d | nn.ConvTranspose1d)]
    assert {c.weight.dtype for c in convs if c.groups == 1 and c.kernel_size[0] > 1} == {
        torch.bfloat16
    }
    enc, dec = codec.init_encoder_state(1), codec.init_decoder_state(1)
    states = [*enc.seanet.convs, *dec.seanet.convs, enc.downsample, dec.upsample]
    tensors = [s.partial if isinstance(s, ConvTransposeState) else s.history for s in states]
    assert {t.dtype for t in tensors} == {torch.float32}


def test_bf16_codes_agree_with_fp32(fp32_codec) -> None:
    codec = copy.deepcopy(fp32_codec)
    store_codec_bf16_(codec)
    pcm = speechlike(2, 24, codec.frame_size, seed=5)
    with torch.no_grad():
        want_codes, want_audio = _stream(fp32_codec, pcm)
        codes, audio = _stream(codec, pcm)
    assert min(distinct_codes(want_codes)) >= 12  # of 48 vectors: codes really vary
    agree = (codes == want_codes).float().mean(dim=(0, 2))  # per codebook
    # Measured: 100% in every codebook (the tiny codec's small layer scales keep its
    # transformer's share small); 93-100% per codebook on the trained demo codec over espeak
    # speech (docs/performance.md).
    assert agree.min() >= 0.95, agree
    error = (audio - want_audio).norm() / want_audio.norm()
    assert 0 < error < 1e-5, error  # measured 4e-7


def test_bf16_streaming_equals_the_whole_signal(fp32_codec, every_conv_in_bf16) -> None:
    codec = copy.deepcopy(fp32_codec)
    store_codec_bf16_(codec, encoder_convs=True)  # every conv path
    pcm = speechlike(2, 3 * codec.config.transformer.context, codec.frame_size, seed=3)
    with torch.no_grad():
        codes, audio = _stream(codec, pcm)
        # Measured equal where oneDNN multiplies bf16 natively: its bf16 convolution (whole) and
        # packed matmul (stream) round alike. On a CPU without (AVX2: no packing, `F.linear`)
        # they round differently and near ties flip: 3 codes of 240 measured.
        agree = (codes == codec.encode(pcm)).float().mean()
        assert agree == 1 if native_bf16_cpu() else agree >= 0.95, agree
        atol = 1e-5 if native_bf16_cpu() else 2e-3  # AVX2: 1e-3 measured, on 15 samples
        torch.testing.assert_close(audio, codec.decode(codes), atol=atol, rtol=0)


needs_onednn_bf16 = pytest.mark.skipif(
    Bf16Linear(nn.Linear(8, 8, bias=False)).packed is None,
    reason="oneDNN has no bf16 kernel for this CPU (no AVX512-BF16): nothing is packed",
)


@needs_onednn_bf16
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # inductor's own use of torch.jit
def test_a_packed_bf16_linear_compiles_with_inductor() -> None:
    """Inductor cannot lower oneDNN's packed weight (it failed `antiphon bench --compile` on a
    CPU with native bf16): a compiled graph calls it through the antiphon::packed_linear op."""
    torch.manual_seed(0)
    stored = Bf16Linear(nn.Linear(64, 32, bias=False))
    torch._dynamo.reset()
    step = torch.compile(lambda x: stored(x) * 2, fullgraph=True, dynamic=False)
    x = torch.randn(1, 2, 64)
    with torch.no_grad():
        torch.testing.assert_close(step(x), stored(x) * 2, rtol=0, atol=0)


@needs_onednn_bf16
def test_bf16_streaming_compiles_as_one_graph(fp32_codec, every_conv_in_bf16) -> None:
    codec = copy.deepcopy(fp32_codec)
    store_codec_bf16_(codec, encoder_convs=True)
    assert_compiles_as_eager(codec)


def test_auto_is_bf16_on_a_cpu_with_native_bf16(tmp_path: Path) -> None:
    with_bf16, without = tmp_path / "with", tmp_path / "without"
    with_bf16.write_text("flags\t\t: fpu sse2 avx512f avx512_bf16 avx512_vnni\n")
    without.write_text("flags\t\t: fpu sse2 avx512f avx512_vnni\n")
    assert native_bf16_cpu(with_bf16) and not native_bf16_cpu(without)
    assert not native_bf16_cpu(tmp_path / "absent")
    with torch.device("meta"):  # shapes only: no weights to fill
        released, tiny = Codec(mimi()), Codec(tiny_mimi())
    cpu = torch.device("cpu")
    want = "bfloat16" if native_bf16_cpu() else "float16" if has_fp16_kernel() else "float32"
    assert codec_weights("auto", cpu, released) == want
    assert codec_weights("auto", torch.device("cuda"), released) == "float32"  # unmeasured
    assert codec_weights("auto", cpu, tiny) == "float32"  # the casts cost more than they save
    assert codec_weights("float32", cpu, released) == "float32"
    assert codec_weights("bfloat16", cpu, tiny) == "bfloat16"
    with pytest.raises(ValueError, match="codec weights"):
        codec_weights("int4", cpu, tiny)
