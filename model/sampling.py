"""Token sampling with parameters and random streams per batch slot.

Every slot has its own temperature and top-k for text and audio, and its own seed. The noise is
a counter-based hash of (seed, frame counter, stream, token id) computed on the device, so a
slot's samples depend only on its own seed and history: not on which other sessions share the
batch, not on the host, and with no host synchronisation (a step can be captured in a CUDA graph).
Temperature 0 means greedy (argmax), which is what the parity tests compare.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import ConfigError
from .streaming import reset_slots_

_MASK32 = 0xFFFFFFFF


@dataclass(frozen=True)
class SamplingParams:
    """Kyutai's defaults: audio T 0.8 top-k 250, text T 0.7 top-k 25."""

    text_temperature: float = 0.7
    text_top_k: int = 25  # 0: no top-k cut
    audio_temperature: float = 0.8
    audio_top_k: int = 250
    seed: int = 0

    @classmethod
    def greedy(cls, seed: int = 0) -> SamplingParams:
        return cls(text_temperature=0.0, audio_temperature=0.0, seed=seed)

    def __post_init__(self) -> None:
        if self.text_temperature < 0 or self.audio_temperature < 0:
            raise ConfigError("temperatures must be >= 0 (0 is greedy)")
        if self.text_top_k < 0 or self.audio_top_k < 0:
            raise ConfigError("top-k must be >= 0 (0 keeps every token)")


@dataclass
class SamplingState:
    """Per-slot sampling parameters and random-stream counters, as device tensors."""

    text_temperature: torch.Tensor  # [B] float
    text_top_k: torch.Tensor  # [B] long
    audio_temperature: torch.Tensor  # [B] float
    audio_top_k: torch.Tensor  # [B] long
    seed: torch.Tensor  # [B] long
    counter: torch.Tensor  # [B] long: frames drawn so far
    # 0, 1, ..., bound - 1: `torch.topk` takes `bound` candidates, a size fixed when the state is
    # created so that a step never changes shape (a compiled or captured step stays valid).
    # A slot's own top-k (<= bound, or 0 for "every token" when the bound is the vocabulary)
    # masks the candidates beyond it.
    text_rank: torch.Tensor  # [text bound] long
    audio_rank: torch.Tensor  # [audio bound] long
    vocabulary: tuple[int, int]  # (text, audio) sizes

    @classmethod
    def create(
        cls,
        batch_size: int,
        params: SamplingParams,
        device: torch.device | str,
        vocabulary: tuple[int, int],
        max_top_k: int | None = None,
    ) -> SamplingState:
        """`vocabulary`: (text, audio) sizes. Every slot may ask for any top-k up to `max_top_k`
        (None: the vocabulary, so any request is served exactly; a smaller bound makes each
        draw cheaper on a GPU and refuses larger requests)."""

        def full(value: float | int, dtype: torch.dtype) -> torch.Tensor:
            return torch.full((batch_size,), value, dtype=dtype, device=device)

        def rank(size: int) -> torch.Tensor:
            bound = size if max_top_k is None else min(max_top_k, size)
            return torch.arange(bound, device=device)

        state = cls(
            text_temperature=full(0.0, torch.float32),
            text_top_k=full(0, torch.long),
            audio_temperature=full(0.0, torch.float32),
            audio_top_k=full(0, torch.long),
            seed=full(0, torch.long),
            counter=full(0, torch.long),
            text_rank=rank(vocabulary[0]),
            audio_rank=rank(vocabulary[1]),
            vocabulary=vocabulary,
        )
        for slot in range(batch_size):
            state.set(slot, params)
        return state

    def set(self, slot: int, params: SamplingParams) -> None:
        """Change one slot's parameters; nothing is rebuilt, no shape changes."""
        for stream, k, rank, size in (
            ("text", params.text_top_k, self.text_rank, self.vocabulary[0]),
            ("audio", params.audio_top_k, self.audio_rank, self.vocabulary[1]),
        ):
            bound = rank.shape[0]
            if bound < size and not 0 < k <= bound:
                raise ConfigError(
                    f"{stream} top-k {k or 'off'} is beyond this engine's limit of {bound}, fixed "
                    f"when it started: ask for a top-k of at most {bound}"
                )
        self.text_temperature[slot] = params.text_temperature
        self.text_top_k[slot] = params.text_top_k
        self.audio_temperature[slot] = params.audio_temperature
        self.audio_top_k[slot] = params.audio_top_k
        self.seed[slot] = params.seed & _MASK32  # all the hash uses; any int is a valid seed

    def reset(self, mask: torch.Tensor) -> None:
        """Restart the random stream of the masked slots (their parameters stay)."""
        reset_slots_(self.counter, mask, 0)


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (Wang/Mueller style) on int64 tensors holding 32-bit values."""
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & _MASK32
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & _MASK32
    return x ^ (x >> 16)


def uniform_noise(
    seed: torch.Tensor, counter: torch.Tensor, stream: int, token_ids: torch.Tensor
) -> torch.Tensor:
    """Uniform values in (0, 1), one per token id [B, N], from per-slot seed and counter [B]."""
    key = _mix32((seed & _MASK32) ^ _mix32((counter * 0x9E3779B1 + stream * 0x85EBCA77) & _MASK32))
    bits = _mix32((key[:, None] ^ (token_ids * 0x27D4EB2F)) & _MASK32)
    return (bits >> 8).float() * 2.0**-24 + 2.0**-25


def sample(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    rank: torch.Tensor,
    seed: torch.Tensor,
    counter: torch.Tensor,
    stream: int,
) -> torch.Tensor:
    """One token per slot from logits [B, V]; greedy where temperature is 0.

    top_k [B]: each slot's cut (0: none); rank [bound]: 0..bound-1, the candidates kept."""
    B, V = logits.shape
    logits = logits.float()
    greedy = logits.argmax(dim=-1)
    values, token_ids = torch.topk(logits, rank.shape[0], dim=-1)  # [B, bound], descending
    slot_k = torch.where(top_k > 0, top_k, V)[:, None]
    values = values.masked_fill(rank >= slot_k, float("-inf"))
    safe_temperature = torch.where(temperature > 0, temperature, 1.0)[:, None]
    probs = torch.softmax(values / safe_temperature, dim=-1)
    # Exponential race: argmax p_i / E_i with E_i ~ Exp(1) draws i with probability p_i.
    exponential = -torch.log(uniform_noise(seed, counter, stream, token_ids))
    choice = (probs / exponential).argmax(dim=-1, keepdim=True)
    sampled = token_ids.gather(-1, choice)[:, 0]
    return torch.where(temperature > 0, sampled, greedy)
