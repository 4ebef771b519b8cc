"""Weights packed once into a CPU kernel's own layout, for the few-row products of streaming.

bf16 (`pack`, `packed_linear`): `F.linear` with a bf16 weight re-blocks the weight into oneDNN's
layout on every call; at the codec's few rows (2 per streaming step at batch 1) that costs as
much as the product itself. Packed once, as inductor's CPU backend packs weights when it freezes
a model (torch's own `mkldnn._reorder_linear_weight`, then `mkldnn._linear_pointwise`), the
codec's transformer linears take 0.55x the time, its first transposed conv 0.5x (one thread,
docs/performance.md).

fp16 (`PackedLinear.fp16`): fbgemm's fp16 GEMM, the kernel behind torch's own
`quantize_dynamic(..., dtype=torch.float16)` (`quantized::linear_prepack_fp16` and
`quantized::linear_dynamic_fp16`): the weight is stored in fp16 (half of fp32's bytes, 11
significant bits against bf16's 8) and widened to fp32 in registers (F16C); activations, bias
and sums stay fp32. It runs on any x86 CPU with AVX2, where bf16 has no hardware: there the
codec's transformer linears take about 0.35x fp32's time (docs/performance.md).

A packed weight is opaque to torch (no storage): it is not saved in a state dict or moved to
another device, so a module keeps its plain weight beside it and uses the packed one only on a
CPU. torch.compile cannot trace one either: a compiled graph calls it through the
`antiphon::packed_linear` custom op, which names it by a number, passed as a tensor so that one
graph serves every codec of the same shapes (a number in the graph would recompile it for each).
A copy (deepcopy, pickle) gets a number of its own.
"""

from __future__ import annotations

import itertools
import weakref

import torch

ROWS_HINT = 2  # rows of a streaming codec step at batch 1: oneDNN picks its blocking for it


def pack(weight: torch.Tensor) -> torch.Tensor | None:
    """A bf16 weight [out, in] on the CPU in oneDNN's layout; None where torch has no oneDNN or
    oneDNN has no bf16 kernel for this CPU (it wants AVX512BW/VL/DQ or AVX-NE-CONVERT: an AVX2
    CPU such as AMD Zen 3 has neither, and the plain `F.linear` serves there)."""
    if weight.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), ROWS_HINT)
    except RuntimeError as exc:  # "bf16 path needs the cpu support ..."
        if "cpu support" not in str(exc):
            raise
        return None


def packed_linear(x: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    """x [..., in] (bf16) times the packed weight, transposed: [..., out] (bf16)."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")


def has_fp16_kernel() -> bool:
    """Whether this torch has fbgemm's fp16 GEMM (x86 builds)."""
    return "fbgemm" in torch.backends.quantized.supported_engines


class PackedLinear:
    """y = x W^T (+ b) for x [..., in] with W [out, in] packed once: in x's dtype out."""

    def __init__(self, packed: torch.Tensor | torch.ScriptObject, fp16: bool, out: int) -> None:
        self._packed = packed
        self._fp16 = fp16
        self.out_features = out
        self._register()

    def _register(self) -> None:
        key = next(_keys)
        self.key = torch.tensor(key)  # what a compiled graph knows it by: an input, not a constant
        _by_key[key] = self

    def __getstate__(self) -> dict[str, object]:
        return {name: value for name, value in self.__dict__.items() if name != "key"}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._register()  # a copy is another object: its own key

    @classmethod
    def bf16(cls, weight: torch.Tensor) -> PackedLinear | None:
        """W in bf16 for oneDNN (no bias); None where torch has no oneDNN or W is not on a CPU."""
        packed = pack(weight.to(torch.bfloat16))
        return None if packed is None else cls(packed, fp16=False, out=weight.shape[0])

    @classmethod
    def fp16(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> PackedLinear | None:
        """W rounded to fp16 for fbgemm, the bias kept fp32; None without fbgemm or off a CPU."""
        if weight.device.type != "cpu" or not has_fp16_kernel():
            return None
        bias = None if bias is None else bias.detach().float().contiguous()
        packed = torch.ops.quantized.linear_prepack_fp16(weight.detach().float().contiguous(), bias)
        return cls(packed, fp16=True, out=weight.shape[0])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return torch.ops.antiphon.packed_linear(x, self.key, self.out_features)
        return self.multiply(x)

    def multiply(self, x: torch.Tensor) -> torch.Tensor:
        if self._fp16:
            y = torch.ops.quantized.linear_dynamic_fp16(x.float().contiguous(), self._packed)
            return y.to(x.dtype)
        assert isinstance(self._packed, torch.Tensor)  # oneDNN's packed bf16 weight
        return packed_linear(x.to(torch.bfloat16), self._packed).to(x.dtype)


_keys = itertools.count()
_by_key: weakref.WeakValueDictionary[int, PackedLinear] = weakref.WeakValueDictionary()


@torch.library.custom_op("antiphon::packed_linear", mutates_args=())
def _packed_linear(x: torch.Tensor, key: torch.Tensor, out_features: int) -> torch.Tensor:
    """`PackedLinear.multiply` for a compiled graph, which cannot hold the packed weight."""
    return _by_key[int(key)].multiply(x)


@_packed_linear.register_fake
def _(x: torch.Tensor, key: torch.Tensor, out_features: int) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], out_features)
