"""The engine: the whole frame path in one place, for one conversation or many.

    mic frame ─► codec.encode_step ─► lm.step ─► codec.decode_step ─► speaker frame
                                         └──► text token ─► readable text

`BatchEngine.step` runs one frame for every session that has one, each in its own slot of the
three states (encoder, LM, decoder); `Engine` is one conversation on a batch of one. A joining
session resets only its slot; a slot whose frame has not arrived is skipped, its state left
exactly as it was; sampling is per slot, so a session's output does not depend on which other
sessions share the batch. This is the only code of a conversation that touches torch; the
runtime and the server call it from their one inference thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from model import LMConfig, SamplingParams, TextStream

from .audio import AudioFormat
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


class NoFreeSlot(RuntimeError):
    """Every slot is taken."""


@dataclass
class _Slot:
    text: TextStream | None
    sampling: SamplingParams


class BatchEngine:
    def __init__(self, model: LoadedModel, slots: int) -> None:
        self.model = model
        self.slots = slots
        codec, lm = model.codec, model.lm
        self._encoder = codec.init_encoder_state(slots)
        self._decoder = codec.init_decoder_state(slots)
        self._lm = lm.init_state(slots, model.sampling)
        self._sessions: dict[int, _Slot] = {}

    @property
    def format(self) -> AudioFormat:
        return AudioFormat(self.sample_rate, self.frame_size)

    @property
    def frame_size(self) -> int:
        return self.model.codec.frame_size

    @property
    def sample_rate(self) -> int:
        return self.model.codec.sample_rate

    @property
    def frame_duration(self) -> float:
        return self.frame_size / self.sample_rate

    @property
    def free_slots(self) -> int:
        return self.slots - len(self._sessions)

    def _mask(self, slots: list[int] | set[int]) -> torch.Tensor:
        mask = torch.zeros(self.slots, dtype=torch.bool)
        mask[list(slots)] = True
        return mask.to(self.model.device)

    def open(self, sampling: SamplingParams | None = None) -> int:
        """A fresh conversation in a free slot; the other slots are not touched."""
        free = [s for s in range(self.slots) if s not in self._sessions]
        if not free:
            raise NoFreeSlot(f"all {self.slots} slots are in use")
        slot = free[0]
        params = sampling or self.model.sampling
        self._sessions[slot] = _Slot(
            self.model.tokenizer.stream() if self.model.tokenizer else None, params
        )
        self.reset(slot)
        self._lm.sampling.set(slot, params)
        return slot

    def close(self, slot: int) -> None:
        self._sessions.pop(slot, None)

    def reset(self, slot: int) -> None:
        mask = self._mask([slot])
        self._encoder.reset(mask)
        self._decoder.reset(mask)
        self._lm.reset(mask)
        session = self._sessions.get(slot)
        if session is not None and session.text is not None:
            session.text.reset()

    def set_sampling(self, slot: int, params: SamplingParams) -> None:
        self._sessions[slot].sampling = params
        self._lm.sampling.set(slot, params)

    def sampling(self, slot: int) -> SamplingParams:
        return self._sessions[slot].sampling

    @torch.no_grad()
    def step(self, frames: dict[int, np.ndarray]) -> dict[int, StepResult]:
        """One frame for each slot in `frames` (float32 [frame_size]); the others are skipped."""
        if not frames:
            return {}
        unknown = set(frames) - set(self._sessions)
        if unknown:
            raise KeyError(f"no open session in slots {sorted(unknown)}")
        codec, lm, device = self.model.codec, self.model.lm, self.model.device
        batch = np.zeros((self.slots, self.frame_size), dtype=np.float32)
        for slot, frame in frames.items():
            batch[slot] = frame
        pcm = torch.from_numpy(batch).to(device).view(self.slots, 1, -1)
        active = self._mask(set(frames))

        start = _clock(device)
        user_codes = codec.encode_step(pcm, self._encoder, active)
        encoded = _clock(device)
        out = lm.step(user_codes, self._lm, active)
        stepped = _clock(device)
        reply = codec.decode_step(out.audio, self._decoder, active)
        replies = reply[:, 0].float().cpu().numpy()
        decoded = _clock(device)

        tokens = out.text.tolist()
        results = {}
        # The step's cost is shared: each session is charged the whole batched step.
        times = (1000 * (encoded - start), 1000 * (stepped - encoded), 1000 * (decoded - stepped))
        for slot in frames:
            text = readable_text(self._sessions[slot].text, tokens[slot], lm.config)
            results[slot] = StepResult(replies[slot], tokens[slot], text, *times)
        return results


class Engine:
    """One conversation: a BatchEngine of one slot, with the controls a conversation uses."""

    def __init__(self, model: LoadedModel, sampling: SamplingParams | None = None) -> None:
        self.model = model
        self._batch = BatchEngine(model, slots=1)
        self._slot = self._batch.open(sampling or model.sampling)

    @property
    def format(self) -> AudioFormat:
        return self._batch.format

    @property
    def frame_size(self) -> int:
        return self._batch.frame_size

    @property
    def sample_rate(self) -> int:
        return self._batch.sample_rate

    @property
    def frame_duration(self) -> float:
        return self._batch.frame_duration

    @property
    def sampling(self) -> SamplingParams:
        return self._batch.sampling(self._slot)

    def reset(self) -> None:
        """A fresh conversation: codec and LM states back to the start, same model."""
        self._batch.reset(self._slot)

    def warm_up(self, frames: int = 3) -> None:
        """Run a few silent frames, then start over: the first steps are slow (allocations,
        kernel selection), and a live microphone would drop frames while they run."""
        silence = np.zeros(self.frame_size, dtype=np.float32)
        for _ in range(frames):
            self.step(silence)
        self.reset()

    def set_sampling(self, params: SamplingParams) -> None:
        self._batch.set_sampling(self._slot, params)

    def step(self, pcm: np.ndarray) -> StepResult:
        """One 80 ms frame of the user's audio (float32 [frame_size] at 24 kHz) in."""
        return self._batch.step({self._slot: pcm})[self._slot]


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
