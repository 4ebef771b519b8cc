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
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from .config import TransformerConfig
from .kvcache import CacheFormat, KVCache
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


def rope_frequencies(head_dim: int, max_period: float, device: torch.device) -> torch.Tensor:
    """The rotation frequency of each (real, imaginary) pair: [head_dim / 2] fp32."""
    pairs = torch.arange(head_dim // 2, device=device, dtype=torch.float32)
    return torch.exp(pairs * (-math.log(max_period) * 2 / head_dim))


def rope_tables(positions: torch.Tensor, freqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [B, 1, T, D/2] of positions [B, T]: built once per step, shared by layers."""
    angles = positions.float()[:, None, :, None] * freqs  # [B, 1, T, D/2]
    return torch.cos(angles), torch.sin(angles)


Rope = tuple[torch.Tensor, torch.Tensor] | None  # (cos, sin) from `rope_tables`, or no RoPE


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved (real, imaginary) pairs of x [..., B, H, T, D] by the tables' angles
    (q and k stacked in front go through at once)."""
    D = x.shape[-1]
    pairs = x.view(*x.shape[:-1], D // 2, 2).float()
    real, imag = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack([real * cos - imag * sin, real * sin + imag * cos], dim=-1)
    return rotated.view(x.shape).to(x.dtype)


# How a streamed step attends to its ring (`Transformer.init_state`):
#   explicit  softmax written out, each slot on its own (the CPU's: slots stay bit-independent)
#   masked    SDPA with a boolean mask over the whole ring
#   prefix    FlexAttention reading only the ring's filled prefix of each slot, in blocks of
#             PREFIX_BLOCK entries (compiled: Triton on CUDA, C++ on a CPU); for one position
#             a step. A conversation's first minutes fill a 3000-entry ring a block at a time.
#   auto      explicit on a CPU, masked elsewhere (prefix is unmeasured on a GPU so far)
Attending = Literal["auto", "explicit", "masked", "prefix"]
ATTENDING: tuple[Attending, ...] = ("auto", "explicit", "masked", "prefix")
PREFIX_BLOCK = 128


@dataclass
class PrefixMask:
    """The ring's filled prefix per slot as one FlexAttention block mask, made once per state:
    its mask reads the state's positions and offsets, and `blocks` (how many blocks of each
    slot hold written entries) is updated in place every step, so every tensor stays where it
    is (one compiled kernel, one CUDA graph)."""

    block_mask: BlockMask
    blocks: torch.Tensor  # [B, 1, 1] int32


def _prefix_mask(
    positions: torch.Tensor, offset: torch.Tensor, config: TransformerConfig
) -> PrefixMask:
    batch, capacity = positions.shape
    count = -(-capacity // PREFIX_BLOCK)
    blocks = torch.zeros(batch, 1, 1, dtype=torch.int32, device=positions.device)
    order = torch.arange(count, dtype=torch.int32, device=positions.device)
    causal, context = config.causal, config.context

    def sees(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        # as `Transformer._constants`' mask; the last block may reach past the ring
        key, query = positions[b, kv.clamp(max=capacity - 1)], offset[b] + q
        allowed = (key >= 0) & (kv < capacity)
        if causal:
            allowed = allowed & (query >= key)
        if context is not None:
            allowed = allowed & (query - key < context)
        return allowed

    block_mask = BlockMask.from_kv_blocks(
        blocks, order.expand(batch, 1, 1, count).contiguous(), BLOCK_SIZE=PREFIX_BLOCK,
        mask_mod=sees, seq_lengths=(1, capacity),
    )  # fmt: skip
    return PrefixMask(block_mask, blocks)


_compiled_flex: Callable[..., torch.Tensor] | None = None


def prefix_attention(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, prefix: PrefixMask
) -> torch.Tensor:
    """FlexAttention over the blocks `prefix` names; compiled once per process (uncompiled,
    FlexAttention computes every entry and only masks them)."""
    global _compiled_flex
    if _compiled_flex is None:
        _compiled_flex = cast(
            Callable[..., torch.Tensor], torch.compile(flex_attention, dynamic=False)
        )
    return _compiled_flex(q, keys, values, block_mask=prefix.block_mask)


@dataclass
class TransformerState:
    caches: list[KVCache]  # one per layer
    positions: torch.Tensor  # [B, C] absolute step held in each ring entry, -1 when empty
    offset: torch.Tensor  # [B] position of each slot's next step
    # Constants of every step, built once here rather than every step (on a GPU, a launch each):
    steps: torch.Tensor  # [max_step] 0, 1, ...
    empty: torch.Tensor  # [B, max_step] all -1
    freqs: torch.Tensor | None  # [head_dim / 2] RoPE frequencies, None without RoPE
    attending: Attending = "explicit"  # never "auto": what `init_state` chose
    prefix: PrefixMask | None = None  # with attending == "prefix"

    @property
    def capacity(self) -> int:
        return self.positions.shape[1]

    def reset(self, mask: torch.Tensor) -> None:
        # Keys and values of a reset slot need no clearing: position -1 masks them out.
        reset_slots_(self.offset, mask, 0)
        reset_slots_(self.positions, mask, -1)


@dataclass
class StepConstants:
    """What every layer of one step shares, built once per step by `Transformer.step`."""

    positions: torch.Tensor  # [B, T] absolute position of each query
    slots: torch.Tensor  # [B, T] ring entry each query's key and value go to
    rope: Rope
    # [B, 1, T, C] True where a query may see a ring entry: SDPA's polarity, and `where`'s for
    # the explicit softmax, so no layer inverts it; None on the prefix path (its own mask)
    visible: torch.Tensor | None
    attending: Attending
    prefix: PrefixMask | None


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

    def _qkv(self, x: torch.Tensor, weight_set: WeightSets, rope: Rope):
        B, T, _ = x.shape
        H, D = self.config.num_heads, self.config.head_dim
        qkv = per_set(self.in_projs, x, weight_set).view(B, T, 3, H, D).permute(2, 0, 3, 1, 4)
        if rope is None:
            q, k, v = qkv.unbind(0)  # each [B, H, T, D]
            return q, k, v
        # q and k rotated together: half the operators of two calls, the same numbers.
        q, k = apply_rope(qkv[:2], *rope).unbind(0)
        return q, k, qkv[2]

    def forward(
        self, x: torch.Tensor, weight_set: WeightSets = 0, rope: Rope = None
    ) -> torch.Tensor:
        """Whole sequence x [B, T, dim], positions 0..T-1 (training, and whole signals).

        One fused attention over the batch: unlike a batch of live conversations (`step`), a
        whole sequence has no neighbours whose numbers must stay independent of it. The mask,
        causal and within `context`, is the same for every sequence: [T, T]."""
        B, T, _ = x.shape
        q, k, v = self._qkv(x, weight_set, rope)
        context = self.config.context
        if not self.config.causal or context is None or context >= T:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=self.config.causal)
        else:
            positions = torch.arange(T, device=x.device)
            delta = positions[:, None] - positions[None, :]
            band = (delta >= 0) & (delta < context)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=band)
        out = out.transpose(1, 2).reshape(B, T, -1)
        return per_set(self.out_projs, out, weight_set)

    def step(
        self, x: torch.Tensor, cache: KVCache, frame: StepConstants, weight_set: int = 0
    ) -> torch.Tensor:
        """x [B, T, dim] at `frame.positions`; writes k, v into the ring cache, then attends."""
        q, k, v = self._qkv(x, weight_set, frame.rope)
        # Inactive slots write too (static shapes): the entry they overwrite is the oldest one,
        # already out of every later query's context, and `Transformer.step` marks it empty
        # after every layer has attended.
        cache.write(frame.slots, k, v)
        keys, values = cache.read(q.dtype)  # [B, H, C, D]
        if frame.prefix is not None:
            out = prefix_attention(q, keys, values, frame.prefix)
        elif frame.attending == "explicit":
            # Explicit softmax attention: PyTorch's fused CPU kernel picks its blocking from the
            # whole batch's mask, so one conversation's numbers changed (by ~1e-8) with what its
            # batch neighbours were doing. This way each slot is computed on its own.
            scores = (q @ keys.transpose(-1, -2)) * q.shape[-1] ** -0.5  # [B, H, T, C]
            assert frame.visible is not None
            scores = torch.where(frame.visible, scores, float("-inf"))
            out = torch.softmax(scores.float(), dim=-1).to(values.dtype) @ values
        else:  # masked
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=frame.visible)
        B, H, T, D = out.shape
        out = out.transpose(1, 2).reshape(B, T, H * D)
        return self.out_projs[weight_set](out)


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

    def forward(self, x: torch.Tensor, weight_set: WeightSets = 0, rope: Rope = None):
        return self._finish(x, self.self_attn(self.norm1(x), weight_set, rope), weight_set)

    def step(self, x, cache: KVCache, frame: StepConstants, weight_set: int = 0) -> torch.Tensor:
        attended = self.self_attn.step(self.norm1(x), cache, frame, weight_set)
        return self._finish(x, attended, weight_set)


class Transformer(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList(TransformerLayer(config) for _ in range(config.num_layers))

    def init_state(
        self,
        batch_size: int,
        max_step: int = 1,
        cache_format: CacheFormat = "compute",
        attending: Attending = "auto",
    ) -> TransformerState:
        """State for steps of at most `max_step` positions at a time.

        The ring holds `context + max_step - 1` entries so that every query of a multi-position
        step still sees its whole context (the streamed result then equals the whole sequence).
        `cache_format`: keys and values in the weights' dtype, or in 8 bits (model/kvcache.py).
        `attending`: how a step attends (`ATTENDING`); prefix needs one position a step and a
        ring of more than one block, and is masked otherwise.
        """
        config = self.config
        if config.context is not None:
            capacity = config.context + max_step - 1
        elif config.weights_per_step:
            capacity = config.weights_per_step
        else:
            raise ValueError("a streaming transformer needs a context (KV-cache capacity)")
        weight = next(self.parameters())
        device = weight.device
        shape = (batch_size, config.num_heads, capacity, config.head_dim)
        freqs = None
        if config.positions == "rope":
            freqs = rope_frequencies(config.head_dim, config.max_period, device)
        if attending == "auto":
            attending = "explicit" if device.type == "cpu" else "masked"
        if attending == "prefix" and (max_step > 1 or capacity <= PREFIX_BLOCK):
            attending = "masked"
        positions = torch.full((batch_size, capacity), -1, device=device, dtype=torch.long)
        offset = torch.zeros(batch_size, device=device, dtype=torch.long)
        return TransformerState(
            caches=[KVCache.create(shape, cache_format, weight.dtype, device) for _ in self.layers],
            positions=positions,
            offset=offset,
            steps=torch.arange(max_step, device=device),
            empty=torch.full((batch_size, max_step), -1, device=device, dtype=torch.long),
            freqs=freqs,
            attending=attending,
            prefix=_prefix_mask(positions, offset, config) if attending == "prefix" else None,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Whole sequence x [B, T, dim]; differentiable. With weights per step, position t
        uses weight set `config.weight_index(t)` (the depth transformer: t is the codebook)."""
        sets: WeightSets = 0
        B, T, _ = x.shape
        if self.config.weights_per_step:
            sets = tuple(self.config.weight_index(t) for t in range(T))
        rope: Rope = None
        if self.config.positions == "rope":
            head_dim, period = self.config.head_dim, self.config.max_period
            positions = torch.arange(T, device=x.device).expand(B, T)
            rope = rope_tables(positions, rope_frequencies(head_dim, period, x.device))
        for layer in self.layers:
            x = layer(x, sets, rope)
        return x

    def _constants(self, state: TransformerState, T: int) -> StepConstants:
        """Positions, ring entries, RoPE tables and mask of this step, for every layer."""
        positions = state.offset[:, None] + state.steps[:T]  # [B, T]
        slots = positions % state.capacity
        state.positions.scatter_(1, slots, positions)
        rope = None if state.freqs is None else rope_tables(positions, state.freqs)
        visible = None
        if state.prefix is not None:  # the blocks up to the last entry written (a ring: all)
            filled = (state.offset + T).clamp(max=state.capacity)
            state.prefix.blocks.copy_(
                ((filled + PREFIX_BLOCK - 1) // PREFIX_BLOCK).view(-1, 1, 1).to(torch.int32)
            )
        else:
            pos_k = state.positions[:, None, :]  # [B, 1, C]
            delta = positions[:, :, None] - pos_k  # [B, T, C]
            allowed = pos_k >= 0
            if self.config.causal:
                allowed = allowed & (delta >= 0)
            if self.config.context is not None:
                allowed = allowed & (delta < self.config.context)
            visible = allowed[:, None]
        return StepConstants(positions, slots, rope, visible, state.attending, state.prefix)

    def step(
        self,
        x: torch.Tensor,
        state: TransformerState,
        active: torch.Tensor | None = None,
        weight_set: int = 0,
    ) -> torch.Tensor:
        """x [B, T, dim] → [B, T, dim]; advances the active slots by T positions."""
        T = x.shape[1]
        frame = self._constants(state, T)
        layers = cast(list[TransformerLayer], list(self.layers))
        for layer, cache in zip(layers, state.caches, strict=True):
            x = layer.step(x, cache, frame, weight_set)
        if active is not None:
            # Inactive slots wrote their entries too (static shapes); mark them empty again.
            unwritten = keep_inactive(active, frame.positions, state.empty[:, :T])
            state.positions.scatter_(1, frame.slots, unwritten)
        state.offset.copy_(keep_inactive(active, state.offset + T, state.offset))
        return x
