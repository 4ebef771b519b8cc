"""The SEANet convolutional encoder and decoder of the Mimi codec, with explicit streaming state.

Layer order, channel counts and ELU positions follow Kyutai's Mimi exactly: `self.model` is a
`ModuleList` laid out index for index like the reference's `nn.Sequential`, so the state-dict keys
are the reference's with `conv.conv` collapsed to `conv` (see `model.kyutai_names`).

Encoder: conv(k7) -> per ratio (reversed): residual block(s), ELU, strided conv (k = 2 * ratio,
channels x2) -> ELU, conv(last kernel) to `dimension`. The decoder mirrors it with transposed
convs, residual blocks after each upsampling, and no final activation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from model.config import SeanetConfig
from model.conv import CausalConv1d, CausalConvTranspose1d, ConvState, ConvTransposeState

AnyConvState = ConvState | ConvTransposeState


@dataclass
class SeanetState:
    """Streaming state of a SEANet encoder or decoder: one state per conv, in layer order."""

    convs: list[AnyConvState]

    def reset(self, mask: torch.Tensor) -> None:
        for conv in self.convs:
            conv.reset(mask)


class ResidualBlock(nn.Module):
    """x + conv1x1(ELU(conv_k(ELU(x)))): a true skip around a bottleneck of dim // compress."""

    def __init__(self, dim: int, kernel_size: int, dilation: int, compress: int) -> None:
        super().__init__()
        hidden = dim // compress
        # Indices 0..3 as in the reference, so keys read `block.1.conv.weight`, `block.3...`.
        self.block = nn.ModuleList(
            [
                nn.ELU(alpha=1.0),
                CausalConv1d(dim, hidden, kernel_size, dilation=dilation),
                nn.ELU(alpha=1.0),
                CausalConv1d(hidden, dim, 1),
            ]
        )

    def convs(self) -> list[CausalConv1d]:
        return [cast(CausalConv1d, self.block[1]), cast(CausalConv1d, self.block[3])]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for layer in self.block:
            h = layer(h)
        return x + h

    def step(
        self, x: torch.Tensor, states: Sequence[ConvState], active: torch.Tensor | None
    ) -> torch.Tensor:
        conv1, conv2 = self.convs()
        h = conv1.step(self.block[0](x), states[0], active)
        h = conv2.step(self.block[2](h), states[1], active)
        return x + h


def _convs(layers: nn.ModuleList) -> list[CausalConv1d | CausalConvTranspose1d]:
    """Every streaming conv of a SEANet, in the order their states are kept."""
    out: list[CausalConv1d | CausalConvTranspose1d] = []
    for layer in layers:
        if isinstance(layer, ResidualBlock):
            out.extend(layer.convs())
        elif isinstance(layer, CausalConv1d | CausalConvTranspose1d):
            out.append(layer)
    return out


def _step(
    layers: nn.ModuleList, x: torch.Tensor, state: SeanetState, active: torch.Tensor | None
) -> torch.Tensor:
    i = 0  # index of the next conv state
    for layer in layers:
        if isinstance(layer, ResidualBlock):
            x = layer.step(x, state.convs[i : i + 2], active)  # type: ignore[arg-type]
            i += 2
        elif isinstance(layer, CausalConv1d | CausalConvTranspose1d):
            x = layer.step(x, state.convs[i], active)  # type: ignore[arg-type]
            i += 1
        else:
            x = layer(x)
    assert i == len(state.convs)
    return x


def _residual_blocks(cfg: SeanetConfig, dim: int) -> list[nn.Module]:
    return [
        ResidualBlock(dim, cfg.residual_kernel_size, cfg.dilation_base**j, cfg.compress)
        for j in range(cfg.n_residual_layers)
    ]


class SeanetEncoder(nn.Module):
    """Waveform [B, channels, T] -> latent [B, dimension, T / hop_length]."""

    def __init__(self, cfg: SeanetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        width = cfg.n_filters
        layers: list[nn.Module] = [CausalConv1d(cfg.channels, width, cfg.kernel_size)]
        for ratio in reversed(cfg.ratios):
            layers += _residual_blocks(cfg, width)
            layers += [
                nn.ELU(alpha=1.0),
                CausalConv1d(width, 2 * width, kernel_size=2 * ratio, stride=ratio),
            ]
            width *= 2
        layers += [nn.ELU(alpha=1.0), CausalConv1d(width, cfg.dimension, cfg.last_kernel_size)]
        self.model = nn.ModuleList(layers)

    def init_state(self, batch_size: int, dtype: torch.dtype | None = None) -> SeanetState:
        """`dtype`: the activations' (default: each conv's weights')."""
        convs = [conv.init_state(batch_size, dtype) for conv in _convs(self.model)]
        return SeanetState(convs=convs)

    def _check(self, x: torch.Tensor) -> None:
        hop = self.cfg.hop_length
        if x.dim() != 3 or x.shape[1] != self.cfg.channels:
            raise ValueError(f"expected audio [B, {self.cfg.channels}, T], got {tuple(x.shape)}")
        if x.shape[-1] == 0 or x.shape[-1] % hop:
            raise ValueError(
                f"audio length {x.shape[-1]} must be a positive multiple of the hop length {hop}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        for layer in self.model:
            x = layer(x)
        return x

    def step(
        self, x: torch.Tensor, state: SeanetState, active: torch.Tensor | None = None
    ) -> torch.Tensor:
        self._check(x)
        return _step(self.model, x, state, active)


class SeanetDecoder(nn.Module):
    """Latent [B, dimension, T] -> waveform [B, channels, T * hop_length]."""

    def __init__(self, cfg: SeanetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        width = cfg.n_filters * 2 ** len(cfg.ratios)
        layers: list[nn.Module] = [CausalConv1d(cfg.dimension, width, cfg.kernel_size)]
        for ratio in cfg.ratios:
            layers += [
                nn.ELU(alpha=1.0),
                CausalConvTranspose1d(width, width // 2, kernel_size=2 * ratio, stride=ratio),
            ]
            width //= 2
            layers += _residual_blocks(cfg, width)
        layers += [nn.ELU(alpha=1.0), CausalConv1d(width, cfg.channels, cfg.last_kernel_size)]
        self.model = nn.ModuleList(layers)

    def init_state(self, batch_size: int, dtype: torch.dtype | None = None) -> SeanetState:
        """`dtype`: the activations' (default: each conv's weights')."""
        convs = [conv.init_state(batch_size, dtype) for conv in _convs(self.model)]
        return SeanetState(convs=convs)

    def _check(self, z: torch.Tensor) -> None:
        if z.dim() != 3 or z.shape[1] != self.cfg.dimension or z.shape[-1] == 0:
            raise ValueError(f"expected latent [B, {self.cfg.dimension}, T>0], got {z.shape}")

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self._check(z)
        for layer in self.model:
            z = layer(z)
        return z

    def step(
        self, z: torch.Tensor, state: SeanetState, active: torch.Tensor | None = None
    ) -> torch.Tensor:
        self._check(z)
        return _step(self.model, z, state, active)
