"""Frozen configurations for the codec (Mimi architecture) and the LM (Moshi architecture).

Presets: `mimi()` and `moshi_7b()` are Kyutai's released configurations; `demo_mimi()` and
`demo_lm()` the bundled demo model's (docs/demo-model.md); `tiny_mimi()` and `tiny_lm()` are
small shapes for tests. Kyutai's `config.json` keyword configs are translated into these
dataclasses once, at the loading boundary (`model.kyutai_config`, used by `model.checkpoint`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

NormKind = Literal["layer_norm", "layer_norm_f32", "rms_norm", "rms_norm_f32"]
GatingKind = Literal["none", "silu", "gelu", "relu", "sigmoid", "tanh", "elu", "leaky_relu"]
PositionsKind = Literal["rope", "none"]


@dataclass(frozen=True)
class TransformerConfig:
    """One stack of transformer layers: the codec's, the LM's temporal or its depth transformer."""

    dim: int
    num_heads: int
    num_layers: int
    # Kyutai's `dim_feedforward`. With gating the real hidden width is derived from it
    # (see `ffn_hidden`), exactly as the released checkpoints were trained.
    ffn_dim: int
    norm: NormKind = "rms_norm_f32"
    gating: GatingKind = "silu"  # "none" means a plain GELU MLP (the codec's)
    layer_scale: float | None = None
    positions: PositionsKind = "rope"
    max_period: float = 10_000.0
    causal: bool = True
    # Attention span in steps; also the capacity of the streaming ring KV cache.
    # None only where the number of steps is bounded (the depth transformer).
    context: int | None = None
    # 0: one set of weights for every step. N: weights per step (the depth transformer uses
    # one set per codebook); `weights_schedule[step]` then picks which set a step uses.
    weights_per_step: int = 0
    weights_schedule: tuple[int, ...] | None = None

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def ffn_hidden(self) -> int:
        if self.gating == "none":
            return self.ffn_dim
        if self.ffn_dim == 4 * self.dim:
            return 21 * self.dim // 8
        return 2 * self.ffn_dim // 3

    @property
    def num_weight_sets(self) -> int:
        if not self.weights_per_step:
            return 1
        if self.weights_schedule is not None:
            return max(self.weights_schedule) + 1
        return self.weights_per_step

    def weight_index(self, step: int) -> int:
        """Which weight set a step uses."""
        if not self.weights_per_step:
            return 0
        return step if self.weights_schedule is None else self.weights_schedule[step]


@dataclass(frozen=True)
class SeanetConfig:
    """The SEANet convolutional encoder/decoder (causal, ELU, constant padding, true skip)."""

    channels: int = 1
    dimension: int = 512
    n_filters: int = 64
    # Decoder order (upsampling); the encoder uses them reversed.
    ratios: tuple[int, ...] = (8, 6, 5, 4)
    kernel_size: int = 7
    residual_kernel_size: int = 3
    last_kernel_size: int = 3
    n_residual_layers: int = 1
    dilation_base: int = 2
    compress: int = 2  # channel reduction inside residual blocks

    @property
    def hop_length(self) -> int:
        return math.prod(self.ratios)


@dataclass(frozen=True)
class MimiConfig:
    sample_rate: int = 24_000
    frame_rate: float = 12.5
    seanet: SeanetConfig = field(default_factory=SeanetConfig)
    transformer: TransformerConfig = field(
        default_factory=lambda: TransformerConfig(
            dim=512,
            num_heads=8,
            num_layers=8,
            ffn_dim=2048,
            norm="layer_norm",
            gating="none",
            layer_scale=0.01,
            context=250,
        )
    )
    codebook_dim: int = 256
    codebook_size: int = 2048
    total_codebooks: int = 32  # 1 semantic + 31 acoustic in the released codec
    semantic_codebooks: int = 1
    num_codebooks: int = 8  # active at run time; Moshi uses 8

    @property
    def frame_size(self) -> int:
        """Samples per codec frame (1920 at 24 kHz and 12.5 Hz)."""
        return int(self.sample_rate / self.frame_rate)

    @property
    def encoder_frame_rate(self) -> float:
        return self.sample_rate / self.seanet.hop_length

    @property
    def resample_stride(self) -> int:
        """Learned down/up-sampling factor between the SEANet rate and the frame rate."""
        stride = self.encoder_frame_rate / self.frame_rate
        if stride != int(stride):
            raise ValueError(f"encoder rate {self.encoder_frame_rate} / frame rate not an integer")
        return int(stride)

    @property
    def frame_duration(self) -> float:
        return 1.0 / self.frame_rate


@dataclass(frozen=True)
class LMConfig:
    """The multistream LM: a temporal transformer over summed stream embeddings, then a depth
    transformer that produces the assistant's codebooks of one frame one at a time."""

    temporal: TransformerConfig
    depth: TransformerConfig
    text_card: int = 32_000
    card: int = 2048
    n_q: int = 16  # audio streams in the input: the assistant's dep_q, then the user's
    dep_q: int = 8  # audio streams the model generates (the assistant's)
    # One delay per stream, in frames: text first, then the n_q audio streams.
    delays: tuple[int, ...] = (0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1)
    text_padding_id: int = 3
    end_of_text_padding_id: int = 0
    depth_multi_linear: bool = True  # one temporal→depth input projection per codebook step
    # The ids that open and close what the model heard, where its monologue writes the user's
    # words down too (the demo model: `train lm --monologue-hears`); None: the monologue is
    # only what the model says (Kyutai's models).
    heard_ids: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if len(self.delays) != self.n_q + 1:
            raise ValueError(f"{len(self.delays)} delays for {self.n_q + 1} streams")
        if not 0 < self.dep_q <= self.n_q:
            raise ValueError(f"dep_q={self.dep_q} must be in 1..n_q={self.n_q}")

    @property
    def num_streams(self) -> int:
        return self.n_q + 1

    @property
    def user_codebooks(self) -> int:
        return self.n_q - self.dep_q

    @property
    def max_delay(self) -> int:
        return max(self.delays)

    @property
    def text_initial_id(self) -> int:
        """Token fed before any text exists (one past the text vocabulary)."""
        return self.text_card

    @property
    def audio_initial_id(self) -> int:
        return self.card


def mimi(num_codebooks: int = 8) -> MimiConfig:
    """Kyutai's released Mimi codec."""
    return MimiConfig(num_codebooks=num_codebooks)


def moshi_7b() -> LMConfig:
    """Kyutai's released Moshi 7B LM (moshiko / moshika)."""
    return LMConfig(
        temporal=TransformerConfig(
            dim=4096, num_heads=32, num_layers=32, ffn_dim=int(4.125 * 4096), context=3000
        ),
        depth=TransformerConfig(
            dim=1024,
            num_heads=16,
            num_layers=6,
            ffn_dim=int(4.125 * 1024),
            positions="none",
            weights_per_step=8,
        ),
    )


def tiny_mimi(num_codebooks: int = 4) -> MimiConfig:
    """A few-hundred-thousand-parameter codec of the same architecture, for tests."""
    return MimiConfig(
        seanet=SeanetConfig(dimension=32, n_filters=4, ratios=(8, 6, 5, 4)),
        transformer=TransformerConfig(
            dim=32,
            num_heads=4,
            num_layers=2,
            ffn_dim=64,
            norm="layer_norm",
            gating="none",
            layer_scale=0.01,
            context=10,
        ),
        codebook_dim=16,
        codebook_size=64,
        total_codebooks=8,
        num_codebooks=num_codebooks,
    )


def tiny_lm(dep_q: int = 4, n_q: int = 8, text_card: int = 100, card: int = 64) -> LMConfig:
    """A small LM of the same architecture, for tests."""
    delays = (0,) + (0,) + (1,) * (dep_q - 1) + (0,) + (1,) * (n_q - dep_q - 1)
    return LMConfig(
        temporal=TransformerConfig(dim=64, num_heads=4, num_layers=2, ffn_dim=176, context=12),
        depth=TransformerConfig(
            dim=32, num_heads=2, num_layers=2, ffn_dim=64, positions="none", weights_per_step=dep_q
        ),
        text_card=text_card,
        card=card,
        n_q=n_q,
        dep_q=dep_q,
        delays=delays,
    )


def demo_mimi() -> MimiConfig:
    """The bundled demo codec: 2.6 M parameters; about 10 ms per frame for streaming encode +
    decode on 2 CPU cores (docs/demo-model.md)."""
    return MimiConfig(
        seanet=SeanetConfig(dimension=128, n_filters=16, ratios=(8, 6, 5, 4)),
        transformer=TransformerConfig(
            dim=128,
            num_heads=8,
            num_layers=2,
            ffn_dim=512,
            norm="layer_norm",
            gating="none",
            layer_scale=0.01,
            context=250,
        ),
        codebook_dim=64,
        codebook_size=1024,
        total_codebooks=8,
        num_codebooks=8,
    )


def demo_lm(text_card: int, card: int = 1024, codebooks: int = 8) -> LMConfig:
    """The bundled demo LM: about 11 M parameters (22 MB in bf16); with the demo codec,
    encode + LM step + decode takes 22-31 ms per frame on 2 CPU cores (docs/demo-model.md,
    "Real time on a CPU"; the model card).

    The depth transformer shares weights between acoustic codebooks (schedule 0, 1, 2, 2, ...):
    a third of the parameters of one set per codebook, at the same speed."""
    delays = (0,) + (0,) + (1,) * (codebooks - 1) + (0,) + (1,) * (codebooks - 1)
    return LMConfig(
        temporal=TransformerConfig(
            dim=256, num_heads=8, num_layers=4, ffn_dim=int(4.125 * 256), context=250
        ),
        depth=TransformerConfig(
            dim=128,
            num_heads=4,
            num_layers=2,
            ffn_dim=int(4.125 * 128),
            positions="none",
            weights_per_step=codebooks,
            weights_schedule=(0, 1) + (2,) * (codebooks - 2),
        ),
        text_card=text_card,
        card=card,
        n_q=2 * codebooks,
        dep_q=codebooks,
        delays=delays,
    )


__all__ = [
    "LMConfig",
    "MimiConfig",
    "SeanetConfig",
    "TransformerConfig",
    "demo_lm",
    "demo_mimi",
    "mimi",
    "moshi_7b",
    "replace",
    "tiny_lm",
    "tiny_mimi",
]
