"""bf16 weights in oneDNN's blocked layout, made once, for products on a CPU.

`F.linear` with a bf16 weight re-blocks the weight into oneDNN's layout on every call; at the
codec's few rows (2 per streaming step at batch 1) that costs as much as the product itself.
Packed once, as inductor's CPU backend packs weights when it freezes a model (torch's own
`mkldnn._reorder_linear_weight`, then `mkldnn._linear_pointwise`), the codec's transformer
linears take 0.55x the time, its first transposed conv 0.5x (one thread, docs/performance.md).

A packed tensor is opaque to torch (it has no storage): it is not saved, copied or moved, so a
module keeps its plain weight beside it and uses the packed one only on a CPU.
"""

from __future__ import annotations

import torch

ROWS_HINT = 2  # rows of a streaming codec step at batch 1: oneDNN picks its blocking for it


def pack(weight: torch.Tensor) -> torch.Tensor | None:
    """A bf16 weight [out, in] on the CPU in oneDNN's layout; None where torch has no oneDNN."""
    if weight.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return None
    return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), ROWS_HINT)


def packed_linear(x: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    """x [..., in] (bf16) times the packed weight, transposed: [..., out] (bf16)."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
