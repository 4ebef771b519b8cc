"""One conversation on one model: the whole frame path in one place.

    mic frame ─► codec.encode_step ─► lm.step ─► codec.decode_step ─► speaker frame
                                         └──► text token ─► readable text

`Engine.step` is the only code of a conversation that touches torch; the runtime calls it from
its one inference thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from model import LMConfig, SamplingParams, TextStream

from .models import LoadedModel


@dataclass(frozen=True)
class StepResult:
    pcm: np.ndarray  # [frame_size] float32: the assistant's audio (silence until the LM is ready)
    text_token: int  # the frame's text token, -1 before the LM's delays have passed
    text: str  # newly readable inner-monologue text ("" for PAD and specials)
    encode_ms: float
    lm_ms: float
    decode_ms: float

    @property
    def compute_ms(self) -> float:
        return self.encode_ms + self.lm_ms + self.decode_ms


def readable_text(stream: TextStream | None, token: int, config: LMConfig) -> str:
    """The newly readable text for one text token. A model without a tokenizer (the random
    stand-in) shows non-special tokens as `<id>`, so its monologue is visible, if meaningless."""
    if stream is not None:
        return stream.step(token)
    if token < 0 or token in (config.text_padding_id, config.end_of_text_padding_id):
        return ""
    return f"<{token}>"


class Engine:
    def __init__(self, model: LoadedModel, sampling: SamplingParams | None = None) -> None:
        self.model = model
        self.sampling = sampling or model.sampling
        codec, lm = model.codec, model.lm
        self._encoder = codec.init_encoder_state(1)
        self._decoder = codec.init_decoder_state(1)
        self._lm = lm.init_state(1, self.sampling)
        self._text = model.tokenizer.stream() if model.tokenizer else None
        self._all = torch.ones(1, dtype=torch.bool, device=model.device)

    @property
    def frame_size(self) -> int:
        return self.model.codec.frame_size

    @property
    def sample_rate(self) -> int:
        return self.model.codec.sample_rate

    @property
    def frame_duration(self) -> float:
        return self.frame_size / self.sample_rate

    def reset(self) -> None:
        """A fresh conversation: codec and LM states back to the start, same model."""
        self._encoder.reset(self._all)
        self._decoder.reset(self._all)
        self._lm.reset(self._all)
        if self._text is not None:
            self._text.reset()

    def warm_up(self, frames: int = 3) -> None:
        """Run a few silent frames, then start over: the first steps are slow (allocations,
        kernel selection), and a live microphone would drop frames while they run."""
        silence = np.zeros(self.frame_size, dtype=np.float32)
        for _ in range(frames):
            self.step(silence)
        self.reset()

    def set_sampling(self, params: SamplingParams) -> None:
        self.sampling = params
        self._lm.sampling.set(0, params)

    def _clock(self) -> float:
        if self.model.device.type == "cuda":
            torch.cuda.synchronize(self.model.device)
        return time.perf_counter()

    @torch.no_grad()
    def step(self, pcm: np.ndarray) -> StepResult:
        """One 80 ms frame of the user's audio (float32 [frame_size] at 24 kHz) in."""
        codec, lm = self.model.codec, self.model.lm
        frame = torch.from_numpy(np.ascontiguousarray(pcm, dtype=np.float32))
        frame = frame.to(self.model.device).view(1, 1, -1)

        start = self._clock()
        user_codes = codec.encode_step(frame, self._encoder)
        encoded = self._clock()
        out = lm.step(user_codes, self._lm)
        stepped = self._clock()
        reply = codec.decode_step(out.audio, self._decoder)
        reply_pcm = reply[0, 0].float().cpu().numpy()
        decoded = self._clock()

        token = int(out.text[0])
        text = readable_text(self._text, token, lm.config)
        return StepResult(
            pcm=reply_pcm,
            text_token=token,
            text=text,
            encode_ms=1000 * (encoded - start),
            lm_ms=1000 * (stepped - encoded),
            decode_ms=1000 * (decoded - stepped),
        )
