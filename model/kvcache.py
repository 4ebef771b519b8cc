"""The ring KV cache of one attention layer, in the compute dtype or in 8 bits.

A cache stores its keys and values in a dtype of its own, chosen when the state is created, never
taken from the weights: int8 weights must not silently give an int8 cache without scales. The
8-bit formats keep one fp32 scale per (slot, head, entry), the absolute maximum of that key or
value vector over the head dimension, so every vector uses the format's whole range:

- "int8": round(x / scale * 127), read back as q * scale / 127;
- "float8": x / scale * 448 cast to float8 e4m3 (its largest finite value is 448).

Halving the cache is what lets 80 conversations at full context fit next to a 7B model's weights
on one 80 GB GPU (shared/ARCHITECTURE.md); the divergence it costs is measured in
docs/performance.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from .errors import ConfigError

CacheFormat = Literal["compute", "int8", "float8"]
CACHE_FORMATS: tuple[str, ...] = ("compute", "int8", "float8")
_STORAGE = {"int8": torch.int8, "float8": torch.float8_e4m3fn}
_LARGEST = {"int8": 127.0, "float8": 448.0}
_TINY = 1e-12  # floor on a scale: an all-zero vector stores zeros, not NaN


def check_cache_format(name: str) -> CacheFormat:
    if name not in CACHE_FORMATS:
        raise ConfigError(
            f"KV-cache format must be one of {', '.join(CACHE_FORMATS)}, got {name!r}"
        )
    return name  # type: ignore[return-value]


@dataclass
class KVCache:
    """A ring of the last `capacity` keys and values of one layer, per batch slot.

    Which entries hold what is kept once per transformer (`TransformerState.positions`), not here:
    every layer writes the same entries."""

    keys: torch.Tensor  # [B, H, C, D] in the storage dtype
    values: torch.Tensor  # [B, H, C, D]
    key_scales: torch.Tensor | None  # [B, H, C, 1] fp32 (8-bit formats), else None
    value_scales: torch.Tensor | None
    largest: float  # the stored format's largest value (8-bit), 0 for the compute dtype

    @classmethod
    def create(
        cls, shape: tuple[int, int, int, int], fmt: CacheFormat, dtype: torch.dtype, device
    ) -> KVCache:
        """An empty cache [B, H, C, D]; `dtype` is the compute dtype (used by "compute")."""
        if fmt == "compute":
            empty = torch.zeros(shape, device=device, dtype=dtype)
            return cls(empty, empty.clone(), None, None, 0.0)
        storage = torch.zeros(shape, device=device, dtype=_STORAGE[fmt])
        scales = torch.ones((*shape[:3], 1), device=device, dtype=torch.float32)
        return cls(storage, storage.clone(), scales, scales.clone(), _LARGEST[fmt])

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, H, T, D] → (stored values, scales [B, H, T, 1])."""
        x = x.float()
        scale = x.abs().amax(dim=-1, keepdim=True).clamp(min=_TINY) / self.largest
        scaled = x / scale
        if self.keys.dtype == torch.int8:
            scaled = scaled.round().clamp(-self.largest, self.largest)
        return scaled.to(self.keys.dtype), scale

    def write(self, slots: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> None:
        """keys, values [B, H, T, D] into ring entries slots [B, T] (in place)."""
        B, H, T, D = keys.shape
        index = slots[:, None, :, None].expand(B, H, T, D)
        if self.key_scales is None or self.value_scales is None:
            self.keys.scatter_(2, index, keys.to(self.keys.dtype))
            self.values.scatter_(2, index, values.to(self.values.dtype))
            return
        scale_index = index[..., :1]
        for stored, scales, x in (
            (self.keys, self.key_scales, keys),
            (self.values, self.value_scales, values),
        ):
            quantized, scale = self._encode(x)
            # As bytes: PyTorch's CPU scatter has no float8 kernel; the bits are the same.
            stored.view(torch.uint8).scatter_(2, index, quantized.view(torch.uint8))
            scales.scatter_(2, scale_index, scale)

    def read(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole ring's keys and values [B, H, C, D] in `dtype`."""
        if self.key_scales is None or self.value_scales is None:
            return self.keys.to(dtype), self.values.to(dtype)
        keys = (self.keys.float() * self.key_scales).to(dtype)
        values = (self.values.float() * self.value_scales).to(dtype)
        return keys, values
