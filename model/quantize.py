"""Weight-only int8 quantization of the LM's linear layers, through torch's own kernel.

Each `nn.Linear` (bias-free, as every linear of the LM) becomes an `Int8Linear`: int8 weights
with one scale per output channel (absolute maximum / 127), multiplied by PyTorch's
`aten._weight_int8pack_mm`, the weight-only int8 matmul it ships for CPU, CUDA and MPS (the one
gpt-fast uses): activations stay in the compute dtype, no kernel of ours, no extra dependency.

The weights take a quarter of their fp32 size (half of bf16), which is what bounds a batch-1
frame on a GPU (reading 7B weights per frame). The divergence it costs is measured in
docs/performance.md (`scripts/divergence.py`). Opt-in, after loading: `quantize_lm_(lm)`.
"""

from __future__ import annotations

import torch
from torch import nn


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


def quantize_linears_(module: nn.Module) -> int:
    """Replace every `nn.Linear` under `module` by an `Int8Linear`, in place; how many."""
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            setattr(module, name, Int8Linear(child))
            count += 1
        else:
            count += quantize_linears_(child)
    return count


def quantize_lm_(lm: nn.Module) -> int:
    """Int8 weights for every linear layer of an LM (temporal, depth, output heads); the
    embeddings and norms stay as they are. Inference only: the LM cannot be trained after."""
    lm.requires_grad_(False)
    return quantize_linears_(lm)
