"""Many conversations on one model: one batched step for every session that has a frame.

Each session owns a slot in the three states (encoder, LM, decoder). A joining session resets
only its slot; a slot whose frame has not arrived this step is skipped (its state left exactly
as it was); sampling parameters and random streams are per slot, so a session's output does not
depend on which other sessions share the batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from model import SamplingParams, TextStream

from .engine import StepResult, readable_text
from .models import LoadedModel


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


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
