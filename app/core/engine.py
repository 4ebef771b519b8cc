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

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model import (
    LM,
    Codec,
    DecoderState,
    EncoderState,
    LMConfig,
    LMState,
    SamplingParams,
    TextStream,
)
from model.errors import AudioInputError, ConfigError
from model.kvcache import CacheFormat

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
    heard: bool = False  # `text` is what the model wrote down of the user's words, not its own

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


@dataclass
class FrameStates:
    """The three states a frame updates in place, one slot per conversation."""

    encoder: EncoderState
    lm: LMState
    decoder: DecoderState


def frame_path(
    codec: Codec,
    lm: LM,
    states: FrameStates,
    staged: torch.Tensor,
    out: torch.Tensor,
    mark: Callable[[int], None] | None = None,
) -> None:
    """The whole frame on the device, from one staged input to one packed output.

    staged [B, frame_size + 1]: each slot's mic frame, then 1.0 where the slot's frame arrived.
    out [B, frame_size + 1] (written): each slot's reply, then its text token (the bits of an
    int32, see `BatchEngine`). No host synchronisation and no shape that depends on data: the
    same function runs eagerly, under `torch.compile(fullgraph=True)` and in a CUDA graph.
    `mark(i)`, when given, is called after part i (1 encode, 2 LM, 3 decode) for timing."""
    frame_size = codec.frame_size
    pcm = staged[:, :frame_size].unsqueeze(1)  # [B, 1, frame_size]
    active = staged[:, frame_size] > 0  # [B]
    user_codes = codec.encode_step(pcm, states.encoder, active)
    if mark is not None:
        mark(1)
    step = lm.step(user_codes, states.lm, active)
    if mark is not None:
        mark(2)
    reply = codec.decode_step(step.audio, states.decoder, active)
    out[:, :frame_size].copy_(reply[:, 0])
    out[:, frame_size:].view(torch.int32).copy_(step.text[:, None])
    if mark is not None:
        mark(3)


COMPILE_NOTICE = (
    "compiling the frame (--compile): minutes the first time on this machine, seconds after"
)


def compiled(function: Callable[..., Any]) -> Callable[..., Any]:
    """`function` for torch.compile (inductor), one graph, static shapes. It compiles on its
    first call: minutes on a 2-core CPU the first time, seconds once inductor's cache holds it
    (kept in $ANTIPHON_CACHE or ~/.cache/antiphon, under torchinductor/, unless
    TORCHINDUCTOR_CACHE_DIR says otherwise: torch's default, /tmp, is emptied at every boot).
    ANTIPHON_COMPILE_BACKEND names another torch.compile backend (the tests use aot_eager: the
    same graph, traced in seconds, no C++)."""
    root = os.environ.get("ANTIPHON_CACHE") or Path.home() / ".cache" / "antiphon"
    cache = Path(root) / "torchinductor"
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache))
    backend = os.environ.get("ANTIPHON_COMPILE_BACKEND", "inductor")
    return torch.compile(function, fullgraph=True, dynamic=False, backend=backend)


class BatchEngine:
    """Conversations in the slots of one batch, stepped together.

    Per frame: the slots' frames are written into one static host buffer (pinned on CUDA), copied
    to the device in one copy, run through `frame_path`, and the replies and text tokens come
    back in one packed copy. Timing uses CUDA events on a GPU (one wait per frame, for the
    result) and the wall clock on the CPU. With `cuda_graph` the whole frame is captured once,
    when the engine is built, and replayed every frame; its time is then reported whole, as
    `lm_ms` (encode_ms and decode_ms are 0). NOT MEASURED: no GPU was available when it was
    written; docs/performance.md says what to measure before making it the default.

    With `model.compiled` (`--compile`) the frame runs as one graph compiled by torch.compile
    (inductor: fused C++ kernels on a CPU), its time reported whole as with a CUDA graph. The
    first frame compiles it (`compiled`).
    """

    def __init__(
        self,
        model: LoadedModel,
        slots: int,
        cache_format: CacheFormat | None = None,
        cuda_graph: bool = False,
    ) -> None:
        self.model = model
        self.slots = slots
        codec, lm, device = model.codec, model.lm, model.device
        if cuda_graph and device.type != "cuda":
            raise ConfigError(
                "a CUDA graph needs a CUDA device: drop the option or use --device cuda"
            )
        self._states = FrameStates(
            encoder=codec.init_encoder_state(slots),
            lm=lm.init_state(
                slots,
                model.sampling,
                cache_format or model.cache_format,
                attending=model.attending,
            ),  # fmt: skip
            decoder=codec.init_decoder_state(slots),
        )
        self._sessions: dict[int, _Slot] = {}
        width = self.frame_size + 1
        pinned = device.type == "cuda"
        self._host_in = torch.zeros(slots, width, pin_memory=pinned)
        self._host_out = torch.zeros(slots, width, pin_memory=pinned)
        self._staged = torch.zeros(slots, width, device=device)
        self._out = torch.zeros(slots, width, device=device)
        self._marks = _Marks(device)
        self._graph = self._capture() if cuda_graph else None
        self._compiled = compiled(frame_path) if model.compiled and not cuda_graph else None

    def _capture(self) -> torch.cuda.CUDAGraph:
        """Record the frame once. Warm-up runs (on a side stream, as CUDA graphs require) see
        every slot inactive, which leaves a fresh state fresh; the slots are reset anyway."""
        codec, lm = self.model.codec, self.model.lm
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                frame_path(codec, lm, self._states, self._staged, self._out)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            frame_path(codec, lm, self._states, self._staged, self._out)
        self._reset_slots(list(range(self.slots)))
        return graph

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

    def open(self, sampling: SamplingParams | None = None) -> int:
        """A fresh conversation in a free slot; the other slots are not touched."""
        free = [s for s in range(self.slots) if s not in self._sessions]
        if not free:
            raise NoFreeSlot(f"all {self.slots} slots are in use")
        slot = free[0]
        params = sampling or self.model.sampling
        self._states.lm.sampling.set(slot, params)  # first: it refuses what it cannot serve
        self._sessions[slot] = _Slot(
            self.model.tokenizer.stream(heard_ids=self.model.lm.config.heard_ids)
            if self.model.tokenizer
            else None,
            params,
        )
        self.reset(slot)
        return slot

    def close(self, slot: int) -> None:
        self._sessions.pop(slot, None)

    def reset(self, slot: int) -> None:
        self._reset_slots([slot])
        session = self._sessions.get(slot)
        if session is not None and session.text is not None:
            session.text.reset()

    def _reset_slots(self, slots: list[int]) -> None:
        mask = torch.zeros(self.slots, dtype=torch.bool)
        mask[slots] = True
        mask = mask.to(self.model.device)
        self._states.encoder.reset(mask)
        self._states.decoder.reset(mask)
        self._states.lm.reset(mask)

    def set_sampling(self, slot: int, params: SamplingParams) -> None:
        self._states.lm.sampling.set(slot, params)
        self._sessions[slot].sampling = params

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
        staged = self._host_in.numpy()
        staged.fill(0.0)
        for slot, frame in frames.items():
            if frame.shape != (self.frame_size,):
                raise ValueError(
                    f"a frame is {self.frame_size} samples ({self.sample_rate} Hz), got "
                    f"{frame.shape}: re-frame the input"
                )
            if not np.isfinite(frame).all():
                raise AudioInputError(f"slot {slot}: audio contains NaN or infinite samples")
            staged[slot, :-1] = frame
            staged[slot, -1] = 1.0

        marks = self._marks
        marks.mark(0)
        self._staged.copy_(self._host_in, non_blocking=True)
        if self._graph is not None:
            self._graph.replay()
        elif self._compiled is not None:
            self._compiled(self.model.codec, self.model.lm, self._states, self._staged, self._out)
        else:
            frame_path(
                self.model.codec, self.model.lm, self._states, self._staged, self._out, marks.mark
            )
        self._host_out.copy_(self._out, non_blocking=True)
        marks.mark(4)
        marks.wait()
        out = self._host_out.numpy()
        tokens = out[:, -1].copy().view(np.int32)

        if self._graph is not None or self._compiled is not None:
            times = (0.0, marks.elapsed_ms(0, 4), 0.0)
        else:  # the copy in is charged to encoding, the copy out to decoding
            times = (marks.elapsed_ms(0, 1), marks.elapsed_ms(1, 2), marks.elapsed_ms(2, 4))
        results = {}
        # The step's cost is shared: each session is charged the whole batched step.
        config = self.model.lm.config
        for slot in frames:
            token = int(tokens[slot])
            stream = self._sessions[slot].text
            text = readable_text(stream, token, config)
            heard = bool(text) and stream is not None and stream.hearing
            results[slot] = StepResult(out[slot, :-1].copy(), token, text, *times, heard)
        return results


class _Marks:
    """Time points of one frame: CUDA events on a GPU (no synchronisation until `wait`, once per
    frame, which reading the result needs anyway), the wall clock on the CPU."""

    def __init__(self, device: torch.device, count: int = 5) -> None:
        self._cuda = device.type == "cuda"
        self._events = (
            [torch.cuda.Event(enable_timing=True) for _ in range(count)] if self._cuda else []
        )
        self._times = [0.0] * count

    def mark(self, i: int) -> None:
        if self._cuda:
            self._events[i].record()
        else:
            self._times[i] = time.perf_counter()

    def wait(self) -> None:
        if self._cuda:
            self._events[-1].synchronize()

    def elapsed_ms(self, start: int, end: int) -> float:
        if self._cuda:
            return self._events[start].elapsed_time(self._events[end])
        return 1000 * (self._times[end] - self._times[start])


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
