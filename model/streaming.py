"""Helpers shared by every explicit streaming state.

A state is a dataclass of preallocated, fixed-shape tensors whose first dimension is the batch
slot. A step updates them in place. Two masks travel with a step:

- `active` ([B] bool, or None for "all"): slots whose frame arrived this step. Inactive slots are
  computed (shapes stay static) but their state is left exactly as it was.
- `mask` in `reset(mask)` ([B] bool): slots to bring back to the fresh state, others untouched.
"""

from __future__ import annotations

import torch


def keep_inactive(
    active: torch.Tensor | None, new: torch.Tensor, old: torch.Tensor
) -> torch.Tensor:
    """`new` in active slots, `old` in the others (batch is the first dimension)."""
    if active is None:
        return new
    return torch.where(active.view(-1, *([1] * (new.dim() - 1))), new, old)


def reset_slots_(tensor: torch.Tensor, mask: torch.Tensor, value: float | int | bool = 0) -> None:
    """In place: every batch slot selected by `mask` is filled with `value`."""
    tensor.masked_fill_(mask.view(-1, *([1] * (tensor.dim() - 1))), value)


def all_slots(batch_size: int, device: torch.device | str | None = None) -> torch.Tensor:
    return torch.ones(batch_size, dtype=torch.bool, device=device)
