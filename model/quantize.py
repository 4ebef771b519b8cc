"""Weights in smaller formats, for inference: int8 for the LM's linear layers (for GPUs), bf16
or fp16 for the codec's large matrices (for CPUs).

Int8 (`quantize_lm_`). Each `nn.Linear` (bias-free, as every linear of the LM) becomes an
`Int8Linear`: int8 weights with one scale per output channel (absolute maximum / 127),
multiplied by PyTorch's `aten._weight_int8pack_mm`, the weight-only int8 matmul it ships for CPU,
CUDA and MPS (the one gpt-fast uses): activations stay in the compute dtype, no kernel of ours,
no extra dependency. The weights take a quarter of their fp32 size (half of bf16), which is what
bounds a batch-1 frame on a GPU (reading 7B weights per frame). The divergence it costs is
measured in docs/performance.md (`scripts/divergence.py`). Opt-in, after loading.

Bf16 (`store_codec_bf16_`). A streaming codec frame on a CPU is matrix-vector products over about
300 MB of fp32 weights (the released Mimi), bound by memory bandwidth. Stored in bf16, the large
matrices are half the bytes and are multiplied by oneDNN's bf16 kernels (AVX512-BF16 where the
CPU has it); activations, norms, attention, streaming state and codebooks stay fp32, so only the
products' inputs and outputs round (relative error about 2^-9 each). Speed and quality in
docs/performance.md.

Fp16 (`store_codec_fp16_`), for x86 CPUs without native bf16 (AVX2 laptops, AMD Zen 3): the same
large matrices rounded to fp16 (11 significant bits, against bf16's 8) and multiplied by
fbgemm's fp16 kernel (model/packed.py), which widens them to fp32 in registers: activations,
bias and sums stay fp32, so only the weights round (relative error about 2^-12 each). Half of
fp32's bytes and a kernel made for few rows: the released Mimi's frame takes about 0.57x fp32's
time (AMD Zen 3, 2 threads). Speed and quality in docs/performance.md.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import nn

from .codec import Codec
from .conv import CausalConv1d, CausalConvTranspose1d
from .packed import PackedLinear, has_fp16_kernel

# Convolutions with fewer weights stay fp32: they fit in the cache, and most of them run on long
# inputs (PyTorch's convolution), where bf16 does not pay.
BF16_MIN_CONV_WEIGHTS = 1 << 20

CodecWeights = Literal["float32", "bfloat16", "float16"]
CODEC_WEIGHTS = ("auto", "float32", "bfloat16", "float16")  # auto: see `codec_weights`
BF16_AUTO_MIN_PARAMETERS = 10_000_000  # between the demo codec (2.6 M) and the released (79 M)


class Int8Linear(nn.Module):
    """y = x W^T with W stored as int8 [out, in] and fp scales [out] (no bias)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        if linear.bias is not None:
            raise ValueError("Int8Linear quantizes bias-free linears only")
        weight = linear.weight.detach().float()  # [out, in]
        scales = weight.abs().amax(dim=1).clamp(min=1e-12) / 127  # [out]
        self.in_features: int = linear.in_features
        self.out_features: int = linear.out_features
        self.weight: torch.Tensor
        self.scales: torch.Tensor
        quantized = (weight / scales[:, None]).round().clamp(-127, 127).to(torch.int8)
        self.register_buffer("weight", quantized)
        # Kept in the compute dtype: the kernel wants the activations' dtype.
        self.register_buffer("scales", scales.to(linear.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        y = torch.ops.aten._weight_int8pack_mm(flat, self.weight, self.scales.to(x.dtype))
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights"


def _replace_linears_(module: nn.Module, make: Callable[[nn.Linear], nn.Module]) -> int:
    """Replace every `nn.Linear` under `module` by `make(linear)`, in place; how many."""
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            setattr(module, name, make(child))
            count += 1
        else:
            count += _replace_linears_(child, make)
    return count


def quantize_linears_(module: nn.Module) -> int:
    """Replace every `nn.Linear` under `module` by an `Int8Linear`, in place; how many."""
    return _replace_linears_(module, Int8Linear)


def quantize_lm_(lm: nn.Module) -> int:
    """Int8 weights for every linear layer of an LM (temporal, depth, output heads); the
    embeddings and norms stay as they are. Inference only: the LM cannot be trained after."""
    lm.requires_grad_(False)
    return quantize_linears_(lm)


class Bf16Linear(nn.Module):
    """y = x W^T with W stored in bf16 [out, in] (no bias): x is multiplied in bf16 and y comes
    back in x's dtype."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        if linear.bias is not None:
            raise ValueError("Bf16Linear stores bias-free linears only")
        self.in_features: int = linear.in_features
        self.out_features: int = linear.out_features
        self.weight: torch.Tensor
        # A buffer, as the int8 weights: the parameters keep telling the compute dtype.
        self.register_buffer("weight", linear.weight.detach().to(torch.bfloat16))
        # On a CPU, also in oneDNN's layout, made once (model/packed.py; a compiled graph
        # reaches it through the antiphon::packed_linear op: inductor cannot lower it).
        self.packed: PackedLinear | None = PackedLinear.bf16(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None and x.device.type == "cpu":
            return self.packed(x)  # multiplies in bf16, returns x's dtype
        return F.linear(x.to(self.weight.dtype), self.weight).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bf16 weights"


def _linears_to_bf16_(module: nn.Module) -> int:
    return _replace_linears_(module, Bf16Linear)


def store_codec_bf16_(codec: Codec, encoder_convs: bool = False) -> int:
    """Store in bf16, in place: every linear layer of the two transformers, and the weight of
    every ungrouped convolution (transposed too) of the decoder with at least
    `BF16_MIN_CONV_WEIGHTS` weights (biases stay fp32). They become buffers; a convolution
    computes in its weight's dtype (model/conv.py). Inference only.

    The encoder's convolutions stay fp32 unless `encoder_convs`: on the trained demo codec they
    flipped up to a third of the finest codebook's codes in bf16, the transformers a few percent
    (docs/performance.md); they are about 5% of a frame's time. Returns how many weights changed.
    """
    if codec.dtype != torch.float32:
        raise ValueError(f"bf16 weight storage is for a float32 codec, this one is {codec.dtype}")
    codec.requires_grad_(False)
    count = _linears_to_bf16_(codec.encoder_transformer)
    count += _linears_to_bf16_(codec.decoder_transformer)
    parts = [codec.decoder, codec.upsample]
    if encoder_convs:
        parts += [codec.encoder, codec.downsample]
    for module in (m for part in parts for m in part.modules()):
        # Only the causal convs compute in their weight's dtype (the quantizer's projections
        # are plain convs, and small).
        if isinstance(module, CausalConv1d | CausalConvTranspose1d):
            conv = module.conv if isinstance(module, CausalConv1d) else module.convtr
            if conv.groups == 1 and conv.weight.numel() >= BF16_MIN_CONV_WEIGHTS:
                weight = conv.weight.detach().to(torch.bfloat16)
                del conv.weight
                conv.register_buffer("weight", weight)
                if isinstance(module, CausalConvTranspose1d):  # x^T W as a linear: W^T packed
                    module.packed = PackedLinear.bf16(weight.view(conv.in_channels, -1).t())
                count += 1
    return count


class Fp16Linear(nn.Module):
    """y = x W^T with W stored in fp16 [out, in] (no bias), multiplied in fp32: x and y stay in
    x's dtype (fp32); on a CPU by fbgemm's fp16 kernel (model/packed.py)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        if linear.bias is not None:
            raise ValueError("Fp16Linear stores bias-free linears only")
        self.in_features: int = linear.in_features
        self.out_features: int = linear.out_features
        self.weight: torch.Tensor
        self.register_buffer("weight", linear.weight.detach().to(torch.float16))
        self.packed: PackedLinear | None = PackedLinear.fp16(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None and x.device.type == "cpu":
            return self.packed(x)
        return F.linear(x, self.weight.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp16 weights"


def store_codec_fp16_(codec: Codec) -> int:
    """Store in fp16, in place: every linear layer of the two transformers (`Fp16Linear`), and
    every ungrouped convolution (transposed too, encoder's and decoder's) with at least
    `BF16_MIN_CONV_WEIGHTS` weights. A convolution keeps its fp32 weight, rounded to fp16's
    values so that every path computes the same numbers, plus a copy packed for fbgemm that its
    short streaming steps use (model/conv.py); biases stay fp32. Inference only. Returns how
    many weights changed."""
    if codec.dtype != torch.float32:
        raise ValueError(f"fp16 weight storage is for a float32 codec, this one is {codec.dtype}")
    codec.requires_grad_(False)
    count = _replace_linears_(codec.encoder_transformer, Fp16Linear)
    count += _replace_linears_(codec.decoder_transformer, Fp16Linear)
    parts = [codec.encoder, codec.downsample, codec.decoder, codec.upsample]
    for module in (m for part in parts for m in part.modules()):
        if isinstance(module, CausalConv1d | CausalConvTranspose1d):
            conv = module.conv if isinstance(module, CausalConv1d) else module.convtr
            if conv.groups == 1 and conv.weight.numel() >= BF16_MIN_CONV_WEIGHTS:
                conv.weight.copy_(conv.weight.half().float())
                if isinstance(module, CausalConv1d):  # the windows' matmul: W as [C_out, C_in K]
                    weight = conv.weight.view(conv.out_channels, -1)
                    module.packed = PackedLinear.fp16(weight, conv.bias)
                else:  # x^T W as a linear: W^T, [C_out K, C_in]; the bias is added after
                    module.packed = PackedLinear.fp16(conv.weight.view(conv.in_channels, -1).t())
                count += 1
    return count


def store_codec_weights_(codec: Codec, weights: CodecWeights) -> int:
    """The codec's weights in the format `weights` (from `codec_weights`), in place; how many
    weights changed (none for float32)."""
    if weights == "bfloat16":
        return store_codec_bf16_(codec)
    if weights == "float16":
        return store_codec_fp16_(codec)
    return 0


def native_bf16_cpu(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX), from Linux's flags."""
    try:
        flags = cpuinfo.read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def codec_weights(choice: str, device: torch.device, codec: Codec) -> CodecWeights:
    """The codec's weight format for --codec-weights `choice` on `device`. "auto", for a codec
    of at least `BF16_AUTO_MIN_PARAMETERS` on a CPU: bf16 where the CPU has native bf16 (the
    released Mimi: 0.6-0.8x the time of fp32), else fp16 where torch has fbgemm's fp16 kernel
    (x86: about 0.57x); fp32 elsewhere (GPUs: unmeasured), and for a small codec, whose weights
    stay in cache and whose casts cost more than they save (the demo codec, 2.6 M: 1.06x in
    bf16; the tiny one: 1.2x)."""
    if choice not in CODEC_WEIGHTS:
        raise ValueError(f"codec weights must be one of {', '.join(CODEC_WEIGHTS)}, got {choice!r}")
    if choice == "auto":
        large = sum(p.numel() for p in codec.parameters()) >= BF16_AUTO_MIN_PARAMETERS
        if not large or device.type != "cpu":
            return "float32"
        if native_bf16_cpu():
            return "bfloat16"
        return "float16" if has_fp16_kernel() else "float32"
    return cast(CodecWeights, choice)
