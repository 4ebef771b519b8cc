"""The transformer shared by the codec, the LM's temporal and its depth transformer.

Weights live on the modules; streaming state is an explicit `TransformerState` holding one ring
KV cache per layer and the next position of every batch slot. Parameter names follow Kyutai's
(`self_attn.in_projs.0.weight`, `norm1.alpha`, `gating.linear_in.weight`, `layer_scale_1.scale`)
so their checkpoints load as they are.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from .config import TransformerConfig
from .streaming import keep_inactive, reset_slots_

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "gelu": F.gelu,
    "relu": F.relu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "elu": F.elu,
    "leaky_relu": F.leaky_relu,
}


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, compute_dtype: torch.dtype | None) -> None:
        super().__init__()
        self.eps = eps
        self.compute_dtype = compute_dtype
        self.alpha = nn.Parameter(torch.ones(1, 1, dim))  # Kyutai's shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x if self.compute_dtype is None else x.to(self.compute_dtype)
        var = self.eps + y.pow(2).mean(dim=-1, keepdim=True)
        return (y * (self.alpha.to(var) * torch.rsqrt(var))).to(x.dtype)


class LayerNormF32(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the weights' dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


def make_norm(kind: str, dim: int) -> nn.Module:
    if kind == "layer_norm":
        return nn.LayerNorm(dim, eps=1e-5)
    if kind == "layer_norm_f32":
        return LayerNormF32(dim, eps=1e-8)
    if kind == "rms_norm":
        return RMSNorm(dim, eps=1e-5, compute_dtype=None)
    if kind == "rms_norm_f32":
        return RMSNorm(dim, eps=1e-8, compute_dtype=torch.float32)
    raise ValueError(f"unknown norm {kind!r}")


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x


class GatedFFN(nn.Module):
    """act(W_a x) * (W_b x), projected back: Kyutai's `ActivationGating`."""

    def __init__(self, dim: int, hidden: int, activation: str) -> None:
        super().__init__()
        self.linear_in = nn.Linear(dim, 2 * hidden, bias=False)
        self.linear_out = nn.Linear(hidden, dim, bias=False)
        self.activation = _ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.linear_in(x).chunk(2, dim=-1)
        return self.linear_out(self.activation(gate) * value)


WeightSets = int | tuple[int, ...]  # one set for every position, or the set of each position


def per_set(modules: nn.ModuleList, x: torch.Tensor, sets: WeightSets) -> torch.Tensor:
    """modules[sets[t]] applied to position t of x [B, T, D] (modules[sets] to all if an int).

    Positions that share a set go through it together; the pieces are put back in order by a
    gather, not by writes in place, so autograd follows it (training uses this path)."""
    if isinstance(sets, int):
        return modules[sets](x)
    if len(set(sets)) == 1:
        return modules[sets[0]](x)
    groups: dict[int, list[int]] = {}
    for t, w in enumerate(sets):
        groups.setdefault(w, []).append(t)
    order = [t for members in groups.values() for t in members]
    pieces = [modules[w](x[:, members]) for w, members in groups.items()]
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return torch.cat(pieces, dim=1)[:, inverse.to(x.device)]


def apply_rope(x: torch.Tensor, positions: torch.Tensor, max_period: float) -> torch.Tensor:
    """Rotate interleaved (real, imaginary) pairs of x [B, H, T, D] by positions [B, T]."""
    B, H, T, D = x.shape
    freqs = torch.exp(
        torch.arange(D // 2, device=x.device, dtype=torch.float32) * (-math.log(max_period) * 2 / D)
    )
    angles = positions.float()[:, None, :, None] * freqs  # [B, 1, T, D/2]
    cos, sin = torch.cos(angles), torch.sin(angles)
    pairs = x.view(B, H, T, D // 2, 2).float()
    real, imag = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack([real * cos - imag * sin, real * sin + imag * cos], dim=-1)
    return rotated.view(B, H, T, D).to(x.dtype)


@dataclass
class KVCache:
    """A ring of the last `capacity` keys and values of one layer, per batch slot."""

    keys: torch.Tensor  # [B, H, C, D]
    values: torch.Tensor  # [B, H, C, D]
    positions: torch.Tensor  # [B, C] absolute step held in each entry, -1 when empty

    @property
    def capacity(self) -> int:
        return self.positions.shape[1]

    def reset(self, mask: torch.Tensor) -> None:
        # Keys and values of a reset slot need no clearing: position -1 masks them out.
        reset_slots_(self.positions, mask, -1)


@dataclass
class TransformerState:
    caches: list[KVCache]
    offset: torch.Tensor  # [B] position of each slot's next step

    def reset(self, mask: torch.Tensor) -> None:
        reset_slots_(self.offset, mask, 0)
        for cache in self.caches:
            cache.reset(mask)


class Attention(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        n = config.num_weight_sets
        self.in_projs = nn.ModuleList(
            nn.Linear(config.dim, 3 * config.dim, bias=False) for _ in range(n)
        )
        self.out_projs = nn.ModuleList(
            nn.Linear(config.dim, config.dim, bias=False) for _ in range(n)
        )

    def _qkv(self, x: torch.Tensor, weight_set: WeightSets, positions: torch.Tensor):
        B, T, _ = x.shape
        H, D = self.config.num_heads, self.config.head_dim
        qkv = per_set(self.in_projs, x, weight_set).view(B, T, 3, H, D).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each [B, H, T, D]
        if self.config.positions == "rope":
            q = apply_rope(q, positions, self.config.max_period)
            k = apply_rope(k, positions, self.config.max_period)
        return q, k, v

    def _attend(self, q, k, v, pos_q, pos_k, weight_set: int) -> torch.Tensor:
        """pos_q [B, T], pos_k [B, S] (-1 for empty entries) → output [B, T, dim]."""
        delta = pos_q[:, :, None] - pos_k[:, None, :]  # [B, T, S]
        allowed = pos_k[:, None, :] >= 0
        if self.config.causal:
            allowed = allowed & (delta >= 0)
        if self.config.context is not None:
            allowed = allowed & (delta < self.config.context)
        if q.device.type == "cpu":
            # Explicit softmax attention: PyTorch's fused CPU kernel picks its blocking from the
            # whole batch's mask, so one conversation's numbers changed (by ~1e-8) with what its
            # batch neighbours were doing. This way each slot is computed on its own.
            scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5  # [B, H, T, S]
            scores = scores.masked_fill(~allowed[:, None], float("-inf"))
            out = torch.softmax(scores.float(), dim=-1).to(v.dtype) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None])
        B, H, T, D = out.shape
        out = out.transpose(1, 2).reshape(B, T, H * D)
        return self.out_projs[weight_set](out)

    def forward(self, x: torch.Tensor, weight_set: WeightSets = 0) -> torch.Tensor:
        """Whole sequence x [B, T, dim], positions 0..T-1 (training, and whole signals).

        One fused attention over the batch: unlike a batch of live conversations (`step`), a
        whole sequence has no neighbours whose numbers must stay independent of it. The mask,
        causal and within `context`, is the same for every sequence: [T, T]."""
        B, T, _ = x.shape
        positions = torch.arange(T, device=x.device)
        q, k, v = self._qkv(x, weight_set, positions.expand(B, T))
        context = self.config.context
        if not self.config.causal or context is None or context >= T:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=self.config.causal)
        else:
            delta = positions[:, None] - positions[None, :]
            band = (delta >= 0) & (delta < context)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=band)
        out = out.transpose(1, 2).reshape(B, T, -1)
        return per_set(self.out_projs, out, weight_set)

    def step(
        self,
        x: torch.Tensor,
        cache: KVCache,
        positions: torch.Tensor,
        active: torch.Tensor | None,
        weight_set: int = 0,
    ) -> torch.Tensor:
        """x [B, T, dim] at absolute positions [B, T]; writes k, v into the ring cache."""
        B, T, _ = x.shape
        H, D = self.config.num_heads, self.config.head_dim
        q, k, v = self._qkv(x, weight_set, positions)
        # Inactive slots write too (static shapes): the entry they overwrite is the oldest one,
        # already out of every later query's context, and their new entry is marked empty after
        # attending (marking it before would leave a fresh slot with nothing to attend to: NaN).
        slots = positions % cache.capacity
        index = slots[:, None, :, None].expand(B, H, T, D)
        cache.keys.scatter_(2, index, k.to(cache.keys.dtype))
        cache.values.scatter_(2, index, v.to(cache.values.dtype))
        cache.positions.scatter_(1, slots, positions)
        out = self._attend(
            q,
            cache.keys.to(q.dtype),
            cache.values.to(q.dtype),
            positions,
            cache.positions,
            weight_set,
        )
        if active is not None:
            cache.positions.scatter_(
                1, slots, keep_inactive(active, positions, -torch.ones_like(positions))
            )
        return out


class TransformerLayer(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.self_attn = Attention(config)
        self.norm1 = make_norm(config.norm, config.dim)
        self.norm2 = make_norm(config.norm, config.dim)
        self.gating: nn.Module
        if config.gating == "none":
            if config.weights_per_step:
                raise ValueError("weights per step need a gated FFN (as Kyutai's)")
            self.linear1 = nn.Linear(config.dim, config.ffn_hidden, bias=False)
            self.linear2 = nn.Linear(config.ffn_hidden, config.dim, bias=False)
        elif config.weights_per_step:
            self.gating = nn.ModuleList(
                GatedFFN(config.dim, config.ffn_hidden, config.gating)
                for _ in range(config.num_weight_sets)
            )
        else:
            self.gating = GatedFFN(config.dim, config.ffn_hidden, config.gating)
        if config.layer_scale is None:
            self.layer_scale_1: nn.Module = nn.Identity()
            self.layer_scale_2: nn.Module = nn.Identity()
        else:
            self.layer_scale_1 = LayerScale(config.dim, config.layer_scale)
            self.layer_scale_2 = LayerScale(config.dim, config.layer_scale)

    def _ffn(self, x: torch.Tensor, weight_set: WeightSets) -> torch.Tensor:
        if self.config.gating == "none":
            return self.linear2(F.gelu(self.linear1(x)))
        if self.config.weights_per_step:
            return per_set(cast(nn.ModuleList, self.gating), x, weight_set)
        return self.gating(x)

    def _finish(
        self, x: torch.Tensor, attended: torch.Tensor, weight_set: WeightSets
    ) -> torch.Tensor:
        x = x.to(attended) + self.layer_scale_1(attended)
        update = self._ffn(self.norm2(x), weight_set)
        return x.to(update) + self.layer_scale_2(update)

    def forward(self, x: torch.Tensor, weight_set: WeightSets = 0) -> torch.Tensor:
        return self._finish(x, self.self_attn(self.norm1(x), weight_set), weight_set)

    def step(self, x, cache, positions, active, weight_set: int = 0) -> torch.Tensor:
        attended = self.self_attn.step(self.norm1(x), cache, positions, active, weight_set)
        return self._finish(x, attended, weight_set)


class Transformer(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList(TransformerLayer(config) for _ in range(config.num_layers))

    def init_state(self, batch_size: int, max_step: int = 1) -> TransformerState:
        """State for steps of at most `max_step` positions at a time.

        The ring holds `context + max_step - 1` entries so that every query of a multi-position
        step still sees its whole context (the streamed result then equals the whole sequence).
        """
        config = self.config
        if config.context is not None:
            capacity = config.context + max_step - 1
        elif config.weights_per_step:
            capacity = config.weights_per_step
        else:
            raise ValueError("a streaming transformer needs a context (KV-cache capacity)")
        weight = next(self.parameters())
        shape = (batch_size, config.num_heads, capacity, config.head_dim)
        caches = [
            KVCache(
                keys=torch.zeros(shape, device=weight.device, dtype=weight.dtype),
                values=torch.zeros(shape, device=weight.device, dtype=weight.dtype),
                positions=torch.full(
                    (batch_size, capacity), -1, device=weight.device, dtype=torch.long
                ),
            )
            for _ in self.layers
        ]
        offset = torch.zeros(batch_size, device=weight.device, dtype=torch.long)
        return TransformerState(caches, offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Whole sequence x [B, T, dim]; differentiable. With weights per step, position t
        uses weight set `config.weight_index(t)` (the depth transformer: t is the codebook)."""
        sets: WeightSets = 0
        if self.config.weights_per_step:
            sets = tuple(self.config.weight_index(t) for t in range(x.shape[1]))
        for layer in self.layers:
            x = layer(x, sets)
        return x

    def step(
        self,
        x: torch.Tensor,
        state: TransformerState,
        active: torch.Tensor | None = None,
        weight_set: int = 0,
    ) -> torch.Tensor:
        """x [B, T, dim] → [B, T, dim]; advances the active slots by T positions."""
        T = x.shape[1]
        positions = state.offset[:, None] + torch.arange(T, device=x.device)  # [B, T]
        layers = cast(list[TransformerLayer], list(self.layers))
        for layer, cache in zip(layers, state.caches, strict=True):
            x = layer.step(x, cache, positions, active, weight_set)
        state.offset.copy_(keep_inactive(active, state.offset + T, state.offset))
        return x
