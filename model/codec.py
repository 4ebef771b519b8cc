"""The streaming neural codec (Mimi architecture): 24 kHz audio <-> K tokens per 80 ms frame.

    encode: pcm → SEANet encoder (25 Hz) → transformer → learned 2x downsampling (12.5 Hz) → RVQ
    decode: codes → RVQ lookup → learned 2x upsampling (25 Hz) → transformer → SEANet → pcm

`encode`/`decode` take whole signals; `encode_step`/`decode_step` take exactly one frame per
batch slot with explicit `EncoderState`/`DecoderState`, and give the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .config import MimiConfig
from .conv import CausalConv1d, CausalConvTranspose1d, ConvState, ConvTransposeState
from .errors import AudioInputError
from .quantizer import SplitResidualVQ
from .seanet import SeanetDecoder, SeanetEncoder, SeanetState
from .streaming import all_slots
from .transformer import Transformer, TransformerState

NO_FRAME = -1  # a code that marks "no frame for this slot" (see `decode_step`)


@dataclass
class EncoderState:
    seanet: SeanetState
    transformer: TransformerState
    downsample: ConvState

    def reset(self, mask: torch.Tensor) -> None:
        self.seanet.reset(mask)
        self.transformer.reset(mask)
        self.downsample.reset(mask)


@dataclass
class DecoderState:
    upsample: ConvTransposeState
    transformer: TransformerState
    seanet: SeanetState

    def reset(self, mask: torch.Tensor) -> None:
        self.upsample.reset(mask)
        self.transformer.reset(mask)
        self.seanet.reset(mask)


class Codec(nn.Module):
    def __init__(self, config: MimiConfig) -> None:
        super().__init__()
        self.config = config
        dim, stride = config.seanet.dimension, config.resample_stride
        if config.transformer.dim != dim:
            raise ValueError("the codec transformer's dim must equal the SEANet dimension")
        self.encoder = SeanetEncoder(config.seanet)
        self.encoder_transformer = Transformer(config.transformer)
        self.downsample = CausalConv1d(
            dim, dim, 2 * stride, stride, bias=False, pad_mode="replicate"
        )
        self.quantizer = SplitResidualVQ(config)
        self.upsample = CausalConvTranspose1d(dim, dim, 2 * stride, stride, groups=dim, bias=False)
        self.decoder_transformer = Transformer(config.transformer)
        self.decoder = SeanetDecoder(config.seanet)
        self._num_codebooks = config.num_codebooks

    @property
    def num_codebooks(self) -> int:
        """Codebooks produced by `encode` (selectable at run time, up to the total trained)."""
        return self._num_codebooks

    @num_codebooks.setter
    def num_codebooks(self, value: int) -> None:
        if not self.config.semantic_codebooks <= value <= self.config.total_codebooks:
            raise ValueError(
                f"num_codebooks must be in {self.config.semantic_codebooks}.."
                f"{self.config.total_codebooks}, got {value}"
            )
        self._num_codebooks = value

    @property
    def frame_size(self) -> int:
        return self.config.frame_size

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the activations and the streaming state: the parameters'. Weights stored
        in bf16 (`model.quantize.store_codec_bf16_`) are buffers, not parameters."""
        return next(self.parameters()).dtype

    @property
    def _steps_per_frame(self) -> int:
        """Transformer steps (at the SEANet rate) in one codec frame."""
        return self.config.frame_size // self.config.seanet.hop_length

    def _check_audio(self, pcm: torch.Tensor, frame: bool) -> None:
        if pcm.dim() != 3 or pcm.shape[1] != 1:
            raise ValueError(f"audio must be mono [B, 1, samples], got {tuple(pcm.shape)}")
        if frame and pcm.shape[2] != self.frame_size:
            raise ValueError(
                f"encode_step takes exactly one frame of {self.frame_size} samples "
                f"({self.sample_rate} Hz), got {pcm.shape[2]}: re-frame the input"
            )
        # Whole signals only: on a frame this would wait for the device every frame and break a
        # compiled or captured frame; the engine checks frames on the host, where they arrive.
        if not frame and not torch.isfinite(pcm).all():
            raise AudioInputError("audio contains NaN or infinite samples")

    # --- whole signals ---------------------------------------------------------------------------

    def encode(self, pcm: torch.Tensor) -> torch.Tensor:
        """pcm [B, 1, samples] → codes [B, K, frames]; the last partial frame is zero-padded."""
        self._check_audio(pcm, frame=False)
        return self.quantizer.encode(self.latent(pcm), self.num_codebooks)

    def latent(self, pcm: torch.Tensor) -> torch.Tensor:
        """pcm [B, 1, samples] → the latent the quantizer takes [B, dimension, frames] (fp32);
        the last partial frame is zero-padded. Under autocast the convolutions and the
        transformer run in its dtype; the latent comes back in fp32 for the quantizer."""
        pad = -pcm.shape[2] % self.frame_size
        x = self.encoder(nn.functional.pad(pcm, (0, pad)))
        x = self.encoder_transformer(x.transpose(1, 2)).transpose(1, 2)
        return self.downsample(x).float()

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, K, frames] → pcm [B, 1, frames * frame_size]."""
        x = self.upsample(self.quantizer.decode(codes))
        x = self.decoder_transformer(x.transpose(1, 2)).transpose(1, 2)
        return self.decoder(x)

    # --- streaming -------------------------------------------------------------------------------

    def init_encoder_state(self, batch_size: int) -> EncoderState:
        return EncoderState(
            seanet=self.encoder.init_state(batch_size, self.dtype),
            transformer=self.encoder_transformer.init_state(batch_size, self._steps_per_frame),
            downsample=self.downsample.init_state(batch_size, self.dtype),
        )

    def init_decoder_state(self, batch_size: int) -> DecoderState:
        return DecoderState(
            upsample=self.upsample.init_state(batch_size, self.dtype),
            transformer=self.decoder_transformer.init_state(batch_size, self._steps_per_frame),
            seanet=self.decoder.init_state(batch_size, self.dtype),
        )

    @torch.no_grad()
    def encode_step(
        self, pcm: torch.Tensor, state: EncoderState, active: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One frame pcm [B, 1, frame_size] → codes [B, K, 1] (NO_FRAME in inactive slots)."""
        self._check_audio(pcm, frame=True)
        x = self.encoder.step(pcm, state.seanet, active)
        x = self.encoder_transformer.step(x.transpose(1, 2), state.transformer, active)
        x = self.downsample.step(x.transpose(1, 2), state.downsample, active)
        codes = self.quantizer.encode(x, self.num_codebooks)
        if active is not None:
            codes = codes.masked_fill(~active[:, None, None], NO_FRAME)
        return codes

    @torch.no_grad()
    def decode_step(
        self, codes: torch.Tensor, state: DecoderState, active: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One frame codes [B, K, 1] → pcm [B, 1, frame_size].

        A slot whose codes contain NO_FRAME (the LM's output before its delays have passed), or
        that `active` leaves out, gets silence and keeps its state unchanged.
        """
        if codes.dim() != 3 or codes.shape[2] != 1:
            raise ValueError(f"decode_step takes codes [B, K, 1], got {tuple(codes.shape)}")
        has_frame = (codes >= 0).all(dim=2).all(dim=1)  # [B]
        live = has_frame if active is None else has_frame & active
        x = self.upsample.step(self.quantizer.decode(codes.clamp(min=0)), state.upsample, live)
        x = self.decoder_transformer.step(x.transpose(1, 2), state.transformer, live)
        pcm = self.decoder.step(x.transpose(1, 2), state.seanet, live)
        return pcm.masked_fill(~live[:, None, None], 0.0)


__all__ = ["Codec", "DecoderState", "EncoderState", "NO_FRAME", "all_slots"]
