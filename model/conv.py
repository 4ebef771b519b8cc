"""Causal 1-d convolutions with explicit streaming state.

Streaming a causal convolution needs only the last few inputs (a strided conv) or the last few
output samples still waiting for overlap-add (a transposed conv). Those live in small fixed-shape
state tensors owned by the caller, so the modules hold weights only and one module serves any
number of independent batch slots.

Semantics follow Kyutai's Mimi: a whole-signal `forward` equals stepping chunk by chunk from a
fresh state, so training-style and streaming use give the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from model.packed import PackedLinear
from model.streaming import keep_inactive, reset_slots_

PadMode = Literal["constant", "replicate"]

# A streaming step of at most this many output frames runs as one matmul over the windows
# (`_windowed_conv`) instead of PyTorch's CPU convolution, which copied the weight or fell back
# to a slow path on such short inputs (Mimi's 512 -> 1024 k16 conv: measured in
# docs/performance.md). Longer outputs (the first layers, 1920 samples) keep the convolution.
MATMUL_MAX_FRAMES = 16


def _in_weight_dtype(conv: nn.Conv1d | nn.ConvTranspose1d, x: torch.Tensor):
    """The weight, the bias and x in the weight's dtype: weights stored in bf16
    (`model.quantize.store_codec_bf16_`) compute on bf16 copies of fp32 activations, and the
    result goes back to fp32. With the weights in the activations' dtype these are no-ops."""
    weight, bias = conv.weight, conv.bias
    return weight, None if bias is None else bias.to(weight.dtype), x.to(weight.dtype)


def _conv(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """conv(x), computed in the weight's dtype, returned in x's."""
    weight, bias, xw = _in_weight_dtype(conv, x)
    y = F.conv1d(xw, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    return y.to(x.dtype)


def _windowed_conv(
    conv: nn.Conv1d, x: torch.Tensor, packed: PackedLinear | None = None
) -> torch.Tensor:
    """conv(x) for x [B, C_in, L] (padding already applied) as one matmul: every output frame's
    window of C_in x K samples against the weight seen as [C_out, C_in * K], a view (no copy),
    or against `packed`, that weight and bias packed once (fp16, model/packed.py). Computed in
    the weight's dtype, returned in x's."""
    B, C_in, _ = x.shape
    K, dilation, stride = conv.kernel_size[0], conv.dilation[0], conv.stride[0]
    windows = x.unfold(-1, (K - 1) * dilation + 1, stride)  # [B, C_in, T_out, K_eff]
    if dilation > 1:
        windows = windows[..., ::dilation]  # [B, C_in, T_out, K]
    T_out = windows.shape[2]
    columns = windows.permute(0, 2, 1, 3).reshape(B, T_out, C_in * K)
    if packed is not None and x.device.type == "cpu":
        return packed(columns).transpose(1, 2)  # [B, C_out, T_out]
    weight, bias, columns = _in_weight_dtype(conv, columns)
    y = F.linear(columns, weight.view(conv.out_channels, C_in * K), bias)
    return y.to(x.dtype).transpose(1, 2)  # [B, C_out, T_out]


@dataclass
class ConvState:
    """Streaming state of a `CausalConv1d`."""

    history: torch.Tensor  # [B, C_in, K_eff - stride] last inputs, prepended to the next chunk
    first: torch.Tensor  # [B] bool: no input seen yet (used by pad_mode "replicate" only)

    def reset(self, mask: torch.Tensor) -> None:
        reset_slots_(self.history, mask, 0.0)
        reset_slots_(self.first, mask, True)


@dataclass
class ConvTransposeState:
    """Streaming state of a `CausalConvTranspose1d`."""

    partial: torch.Tensor  # [B, C_out, K - stride] overlap-add tail (bias excluded)

    def reset(self, mask: torch.Tensor) -> None:
        reset_slots_(self.partial, mask, 0.0)


def _check_input(x: torch.Tensor, channels: int, stride: int, what: str) -> None:
    if x.dim() != 3 or x.shape[1] != channels:
        raise ValueError(f"{what} expects input [B, {channels}, T], got {tuple(x.shape)}")
    if x.shape[-1] == 0 or x.shape[-1] % stride:
        raise ValueError(
            f"{what}: input length {x.shape[-1]} must be a positive multiple of the stride "
            f"{stride}; buffer the signal into whole strides before calling"
        )


def _check_batch(x: torch.Tensor, state_batch: int, what: str) -> None:
    if x.shape[0] != state_batch:
        raise ValueError(f"{what}: input batch {x.shape[0]} != state batch {state_batch}")


class CausalConv1d(nn.Module):
    """Conv1d padded on the left only, so output t depends on inputs <= t * stride + stride - 1.

    The left padding is K_eff - stride samples (K_eff = (kernel - 1) * dilation + 1): each output
    frame then consumes exactly `stride` new samples, which is what makes chunked streaming exact.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
        pad_mode: PadMode = "constant",
    ) -> None:
        super().__init__()
        if pad_mode not in ("constant", "replicate"):
            raise ValueError(f"pad_mode must be 'constant' or 'replicate', got {pad_mode!r}")
        effective_kernel = (kernel_size - 1) * dilation + 1
        if effective_kernel < stride:
            raise ValueError(f"effective kernel {effective_kernel} smaller than stride {stride}")
        self.pad_mode = pad_mode
        self.stride = stride
        self.padding = effective_kernel - stride  # history length
        self.conv = nn.Conv1d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            dilation=dilation,
            groups=groups,
            bias=bias,
        )
        # The weight (and bias) as [C_out, C_in * K] packed for a CPU kernel, when stored so
        # (`model.quantize.store_codec_fp16_`): the short streaming steps use it.
        self.packed: PackedLinear | None = None

    def init_state(self, batch_size: int, dtype: torch.dtype | None = None) -> ConvState:
        """`dtype`: the activations' (default: the weights'; bf16-stored weights take fp32)."""
        weight = self.conv.weight
        shape = (batch_size, self.conv.in_channels, self.padding)
        history = weight.new_zeros(shape, dtype=dtype or weight.dtype)
        first = torch.ones(batch_size, dtype=torch.bool, device=weight.device)
        return ConvState(history=history, first=first)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Whole signal [B, C_in, T] -> [B, C_out, T / stride], as if stepped from fresh."""
        _check_input(x, self.conv.in_channels, self.stride, "CausalConv1d")
        if self.padding:
            mode = "replicate" if self.pad_mode == "replicate" else "constant"
            x = F.pad(x, (self.padding, 0), mode=mode)
        return _conv(self.conv, x)

    def step(
        self, x: torch.Tensor, state: ConvState, active: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One chunk [B, C_in, T] (T a multiple of the stride) -> [B, C_out, T / stride].

        The state is updated in place in the `active` slots only (all slots when None).
        """
        _check_input(x, self.conv.in_channels, self.stride, "CausalConv1d.step")
        _check_batch(x, state.history.shape[0], "CausalConv1d.step")
        P = self.padding
        if P == 0:
            return _conv(self.conv, x)  # 1x1 convolutions: no window to gather
        short = self.conv.groups == 1 and x.shape[-1] // self.stride <= MATMUL_MAX_FRAMES
        history = state.history  # [B, C_in, P]
        if self.pad_mode == "replicate":
            # Before any input, the "past" is the first sample repeated (F.pad's replicate).
            history = torch.where(state.first.view(-1, 1, 1), x[..., :1], history)
        x = torch.cat([history, x], dim=-1)  # [B, C_in, P + T]
        y = _windowed_conv(self.conv, x, self.packed) if short else _conv(self.conv, x)
        state.history.copy_(keep_inactive(active, x[..., -P:], state.history))
        if self.pad_mode == "replicate":
            seen = torch.zeros_like(state.first)
            state.first.copy_(keep_inactive(active, seen, state.first))
        return y


class CausalConvTranspose1d(nn.Module):
    """ConvTranspose1d whose K - stride trailing samples are trimmed, so T frames give T * stride
    samples and no output depends on a later frame.

    Streaming keeps the trimmed tail (without bias) and adds it to the start of the next chunk:
    overlap-add, exactly as the whole-signal transposed convolution sums overlapping kernels.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        groups: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if kernel_size < stride:
            raise ValueError(f"kernel_size {kernel_size} smaller than stride {stride}")
        self.stride = stride
        self.trim = kernel_size - stride
        self.convtr = nn.ConvTranspose1d(
            in_channels, out_channels, kernel_size, stride=stride, groups=groups, bias=bias
        )
        # The weight as [C_out * K, C_in] packed for a CPU kernel (bf16 or fp16), when stored
        # so (`model.quantize.store_codec_bf16_`, `store_codec_fp16_`; model/packed.py).
        self.packed: PackedLinear | None = None

    def init_state(self, batch_size: int, dtype: torch.dtype | None = None) -> ConvTransposeState:
        """`dtype`: the activations' (default: the weights'; bf16-stored weights take fp32)."""
        weight = self.convtr.weight
        shape = (batch_size, self.convtr.out_channels, self.trim)
        partial = weight.new_zeros(shape, dtype=dtype or weight.dtype)
        return ConvTransposeState(partial=partial)

    def _transposed(self, x: torch.Tensor) -> torch.Tensor:
        """The untrimmed transposed convolution [B, C_in, T] -> [B, C_out, (T - 1) * S + K].

        PyTorch's CPU kernel for it is slow on the few frames of a streaming step (23 ms for
        Mimi's first decoder layer at 2 frames on 2 cores); one matmul producing every kernel's
        contribution, then an overlap-add (`fold`), gives the same sums in a few ms.
        """
        conv = self.convtr
        if conv.groups != 1:
            return conv(x)
        B, C_in, T = x.shape
        C_out, K = conv.out_channels, conv.kernel_size[0]
        weight, _, xw = _in_weight_dtype(conv, x)  # the bias is added below, in x's dtype
        weight = weight.view(C_in, C_out * K)
        if self.packed is not None and x.device.type == "cpu":
            contributions = self.packed(x.transpose(1, 2)).transpose(1, 2)  # [B, C_out*K, T]
        elif T < 8 or weight.dtype == torch.bfloat16:
            # x^T W, batch folded into the rows: the weight is read in place. W^T x (below) on
            # Mimi's first decoder layer, 2 frames, took 12x as long (interleaved, one thread);
            # in bf16 it is a slow batched matmul at every length (2x fp32 at 16 frames).
            contributions = (xw.transpose(1, 2) @ weight).transpose(1, 2)  # [B, C_out*K, T]
        else:  # fp32 from 16 frames on: W^T x is the faster form (1.2x at 16, even at 480)
            contributions = torch.matmul(weight.t(), xw)  # [B, C_out*K, T]
        contributions = contributions.to(x.dtype)
        y = F.fold(
            contributions,
            output_size=(1, (T - 1) * self.stride + K),
            kernel_size=(1, K),
            stride=(1, self.stride),
        )[:, :, 0]  # [B, C_out, (T - 1) * S + K]
        return y if conv.bias is None else y + conv.bias[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Whole signal [B, C_in, T] -> [B, C_out, T * stride]."""
        _check_input(x, self.convtr.in_channels, 1, "CausalConvTranspose1d")
        y = self._transposed(x)  # [B, C_out, (T - 1) * stride + K]
        return y[..., : y.shape[-1] - self.trim]

    def step(
        self, x: torch.Tensor, state: ConvTransposeState, active: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One chunk [B, C_in, T] -> [B, C_out, T * stride]; state updated in `active` slots."""
        _check_input(x, self.convtr.in_channels, 1, "CausalConvTranspose1d.step")
        _check_batch(x, state.partial.shape[0], "CausalConvTranspose1d.step")
        P = self.trim
        y = self._transposed(x)  # [B, C_out, T * stride + P]
        if P == 0:
            return y
        # Head first, then read the tail: when K > 2 * stride and T is small they overlap, and
        # the carried tail must include what was just added.
        y[..., :P] += state.partial
        tail = y[..., -P:]  # [B, C_out, P]
        if self.convtr.bias is not None:
            tail = tail - self.convtr.bias[:, None]  # the next chunk adds its own bias
        state.partial.copy_(keep_inactive(active, tail, state.partial))
        return y[..., :-P]
