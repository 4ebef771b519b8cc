"""The multistream speech-text LM (Moshi architecture) and its streaming step.

Streams, in order: the assistant's text (the inner monologue), the assistant's `dep_q` audio
codebooks, the user's `n_q - dep_q` audio codebooks. Each stream is delayed by `config.delays`
frames (acoustic codebooks one frame behind semantic ones). Per frame, the temporal transformer
reads the sum of every stream's embedding; the depth transformer then produces the assistant's
codebooks one at a time, conditioned on the text token just sampled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from .config import LMConfig
from .kvcache import CacheFormat
from .sampling import SamplingParams, SamplingState, sample
from .streaming import all_slots, keep_inactive, reset_slots_
from .transformer import Attending, Transformer, TransformerState, make_norm

UNGENERATED = -2  # a token ring entry not written yet
NOT_READY = -1  # an output token of a frame whose delays have not passed


def embed(table: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Embedding lookup where token -1 means "no input" (a zero vector), as Kyutai trains."""
    out = table(tokens.clamp(min=0))
    return out.masked_fill((tokens < 0)[..., None], 0.0)


@dataclass
class LMState:
    """A conversation's state in each batch slot."""

    tokens: torch.Tensor  # [B, streams, ring] token ring, delays applied
    offset: torch.Tensor  # [B] frames stepped so far
    temporal: TransformerState
    depth: TransformerState  # scratch for one frame's codebooks, cleared every frame
    sampling: SamplingState
    # Per-frame constants, built once here rather than every frame (on a GPU, a host-to-device
    # copy each): the delays, the initial tokens, an all-slots mask.
    delays: torch.Tensor  # [streams] long
    initial: torch.Tensor  # [B, streams, 1] text then audio initial tokens
    everyone: torch.Tensor  # [B] bool, all True

    def reset(self, mask: torch.Tensor) -> None:
        """Fresh conversation in the masked slots; the other slots are left bit-identical."""
        reset_slots_(self.tokens, mask, UNGENERATED)
        reset_slots_(self.offset, mask, 0)
        self.temporal.reset(mask)
        self.sampling.reset(mask)


@dataclass
class LMFrame:
    """What one step produced."""

    text: torch.Tensor  # [B] the frame's text token (delays undone), NOT_READY early on
    audio: torch.Tensor  # [B, dep_q, 1] the frame's assistant codes, NOT_READY early on
    ready: torch.Tensor  # [B] bool: the delays have passed and the slot was active
    text_logits: torch.Tensor  # [B, text_card] logits of this step's text token
    audio_logits: torch.Tensor  # [B, dep_q, card] logits of this step's codebooks (delayed)


class LM(nn.Module):
    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        self.config = config
        dim, depth_dim = config.temporal.dim, config.depth.dim
        self.emb = nn.ModuleList(nn.Embedding(config.card + 1, dim) for _ in range(config.n_q))
        self.text_emb = nn.Embedding(config.text_card + 1, dim)
        self.transformer = Transformer(config.temporal)
        self.out_norm = make_norm(config.temporal.norm, dim)
        self.text_linear = nn.Linear(dim, config.text_card, bias=False)
        schedule = config.depth.weights_schedule
        num_in = 1
        if config.depth_multi_linear:
            num_in = config.dep_q if schedule is None else max(schedule) + 1
        self.depformer_in = nn.ModuleList(
            nn.Linear(dim, depth_dim, bias=False) for _ in range(num_in)
        )
        self.depformer_text_emb = nn.Embedding(config.text_card + 1, depth_dim)
        self.depformer_emb = nn.ModuleList(
            nn.Embedding(config.card + 1, depth_dim) for _ in range(config.dep_q - 1)
        )
        self.depformer = Transformer(config.depth)
        self.linears = nn.ModuleList(
            nn.Linear(depth_dim, config.card, bias=False) for _ in range(config.dep_q)
        )

    # --- shared pieces -------------------------------------------------------------------------

    def _temporal_input(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, streams, T] → summed embeddings [B, T, dim]."""
        x = embed(self.emb[0], tokens[:, 1])
        for k in range(1, self.config.n_q):
            x = x + embed(self.emb[k], tokens[:, 1 + k])
        return x + embed(self.text_emb, tokens[:, 0])

    def _depth_input(self, codebook: int, temporal_out: torch.Tensor, previous: torch.Tensor):
        """Depth step `codebook`'s input: the projected temporal output + the previous token."""
        config = self.config
        if config.depth_multi_linear:
            index = (
                config.depth.weight_index(codebook) if config.depth.weights_schedule else codebook
            )
        else:
            index = 0
        x = self.depformer_in[index](temporal_out)
        table = self.depformer_text_emb if codebook == 0 else self.depformer_emb[codebook - 1]
        return x + embed(table, previous)

    # --- streaming -----------------------------------------------------------------------------

    def init_state(
        self,
        batch_size: int,
        sampling: SamplingParams | None = None,
        cache_format: CacheFormat = "compute",
        max_top_k: int | None = None,
        attending: Attending = "auto",
    ) -> LMState:
        """A fresh conversation in every slot. `cache_format`: the temporal transformer's KV
        cache (model/kvcache.py; the depth transformer's 8-entry scratch stays in the compute
        dtype). `max_top_k`: the largest top-k a slot may ask for (model/sampling.py).
        `attending`: how the temporal transformer attends to its ring (model.transformer)."""
        device = self.text_linear.weight.device
        config = self.config
        ring = config.max_delay + 2
        initial = torch.full(
            (batch_size, config.num_streams, 1), config.audio_initial_id, device=device
        )
        initial[:, 0] = config.text_initial_id
        return LMState(
            tokens=torch.full(
                (batch_size, config.num_streams, ring), UNGENERATED, dtype=torch.long, device=device
            ),
            offset=torch.zeros(batch_size, dtype=torch.long, device=device),
            temporal=self.transformer.init_state(
                batch_size, cache_format=cache_format, attending=attending
            ),
            depth=self.depformer.init_state(batch_size),
            sampling=SamplingState.create(
                batch_size,
                sampling or SamplingParams(),
                device,
                vocabulary=(config.text_card, config.card),
                max_top_k=max_top_k,
            ),
            delays=torch.tensor(config.delays, device=device),
            initial=initial,
            everyone=all_slots(batch_size, device),
        )

    @torch.no_grad()
    def step(
        self, user_codes: torch.Tensor, state: LMState, active: torch.Tensor | None = None
    ) -> LMFrame:
        """One frame: the user's codes [B, K_user, 1] in, the assistant's text and codes out."""
        config = self.config
        B = state.offset.shape[0]
        if user_codes.dim() != 3 or user_codes.shape[0] != B or user_codes.shape[2] != 1:
            raise ValueError(
                f"user codes must be [{B}, {config.user_codebooks}, 1], got "
                f"{tuple(user_codes.shape)}"
            )
        if user_codes.shape[1] < config.user_codebooks:
            raise ValueError(
                f"the LM needs {config.user_codebooks} user codebooks, got "
                f"{user_codes.shape[1]}: encode with at least that many"
            )
        ring = state.tokens.shape[2]
        delays = state.delays
        offset = state.offset
        is_active = state.everyone if active is None else active

        # The user's codes go into the ring at their delayed positions.
        user = user_codes[:, : config.user_codebooks, 0]  # [B, Ku]
        user_rows = state.tokens[:, config.dep_q + 1 :]  # [B, Ku, ring] view
        where = ((offset[:, None] + delays[config.dep_q + 1 :]) % ring)[..., None]
        old = user_rows.gather(2, where)[..., 0]
        user_rows.scatter_(2, where, torch.where(is_active[:, None], user, old)[..., None])

        # This frame's input: every stream at the current position, initial tokens until each
        # stream's delay has passed (and for inactive slots, which must not read garbage).
        current = state.tokens.gather(
            2, (offset % ring)[:, None, None].expand(B, config.num_streams, 1)
        )
        before_start = (offset[:, None] <= delays[None, :])[..., None] | ~is_active[:, None, None]
        inputs = torch.where(before_start, state.initial, current)  # [B, streams, 1]

        x = self.transformer.step(self._temporal_input(inputs), state.temporal, active)
        temporal_out = self.out_norm(x)  # [B, 1, dim]
        text_logits = self.text_linear(temporal_out)[:, 0]  # [B, text_card]
        sampling = state.sampling
        text = sample(
            text_logits,
            sampling.text_temperature,
            sampling.text_top_k,
            sampling.text_rank,
            sampling.seed,
            sampling.counter,
            stream=0,
        )

        # Depth transformer: the assistant's codebooks of this step, one after the other.
        state.depth.reset(state.everyone)
        previous, codes, audio_logits = text, [], []
        for k in range(config.dep_q):
            y = self.depformer.step(
                self._depth_input(k, temporal_out, previous[:, None]),
                state.depth,
                weight_set=config.depth.weight_index(k),
            )
            logits = self.linears[k](y)[:, 0]  # [B, card]
            previous = sample(
                logits,
                sampling.audio_temperature,
                sampling.audio_top_k,
                sampling.audio_rank,
                sampling.seed,
                sampling.counter,
                stream=1 + k,
            )
            codes.append(previous)
            audio_logits.append(logits)

        # The assistant's new tokens go in at the next position; then read the frame whose
        # delays have all passed.
        new_offset = keep_inactive(active, offset + 1, offset)
        generated = torch.stack([text, *codes], dim=1)  # [B, 1 + dep_q]
        rows = state.tokens[:, : config.dep_q + 1]
        where = (new_offset % ring)[:, None, None].expand(B, config.dep_q + 1, 1)
        old = rows.gather(2, where)[..., 0]
        rows.scatter_(2, where, torch.where(is_active[:, None], generated, old)[..., None])
        state.offset.copy_(new_offset)
        sampling.counter.copy_(keep_inactive(active, sampling.counter + 1, sampling.counter))

        gen_delays = delays[: config.dep_q + 1]
        read = ((new_offset[:, None] - config.max_delay + gen_delays) % ring)[..., None]
        out = state.tokens[:, : config.dep_q + 1].gather(2, read)[..., 0]  # [B, 1 + dep_q]
        ready = (new_offset > config.max_delay) & is_active
        out = out.masked_fill(~ready[:, None], NOT_READY)
        return LMFrame(
            text=out[:, 0],
            audio=out[:, 1:, None],
            ready=ready,
            text_logits=text_logits,
            audio_logits=torch.stack(audio_logits, dim=1),
        )

    # --- whole sequence (teacher forcing, for training) ------------------------------------------

    def forward(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced logits for aligned streams codes [B, streams, T].

        Returns text logits [B, T, text_card] and audio logits [B, dep_q, T, card] aligned with
        `codes` (position t predicts codes[:, :, t]); positions a delay pushes past the end are NaN.
        """
        text_logits, audio_logits, _, _ = self.forward_delayed(codes)
        audio_logits = undelay(audio_logits, self.config.delays[1 : self.config.dep_q + 1])
        text_logits = undelay(text_logits[:, None], self.config.delays[:1])[:, 0]
        return text_logits, audio_logits

    def forward_delayed(
        self, codes: torch.Tensor, depth_frames: torch.Tensor | None = None
    ) -> TeacherForced:
        """Teacher forcing in the model's own (delayed) time, as training wants it.

        codes [B, streams, T] aligned, -1 where there is no token. Returns text logits
        [B, T, text_card], audio logits [B, dep_q, T, card], the delayed targets [B, streams, T]
        they predict (-1 where a delay left no target) and the temporal transformer's output
        [B, T, dim] (what training-only heads read). Training on these is the same loss as
        on `forward`'s undelayed logits, without copying the logits back into aligned time (half
        of a CPU training step).

        `depth_frames` (flat indices into the B * T frames) runs the depth transformer on those
        frames only, and the audio logits are then [1, dep_q, N, card], frame n of them the
        frame depth_frames[n] (`frames_of` picks the matching targets). The depth transformer
        is two thirds of a CPU training step of the demo LM, and a random share of the frames
        gives an unbiased estimate of the audio loss."""
        config = self.config
        B, S, T = codes.shape
        if config.num_streams != S:
            raise ValueError(f"codes must have {config.num_streams} streams, got {S}")
        initial = torch.full(
            (B, S, 1), config.audio_initial_id, dtype=codes.dtype, device=codes.device
        )
        initial[:, 0] = config.text_initial_id
        delayed = delay_streams(codes, config.delays, initial)
        sequence = torch.cat([initial, delayed], dim=2)  # [B, S, T + 1]
        temporal_out = self.out_norm(self.transformer(self._temporal_input(sequence[:, :, :-1])))
        text_logits = self.text_linear(temporal_out)  # [B, T, text_card]

        targets = sequence[:, :, 1:]  # token k of the depth input is stream k's target at t
        hidden = temporal_out
        if depth_frames is not None:
            hidden = temporal_out.reshape(B * T, 1, -1)[depth_frames].transpose(0, 1)  # [1, N, D]
            targets = frames_of(targets, depth_frames)
        rows, frames = hidden.shape[:2]
        depth_in = torch.stack(
            [self._depth_input(k, hidden, targets[:, k]) for k in range(config.dep_q)],
            dim=2,
        )  # [rows, frames, dep_q, depth_dim]
        depth_out = self.depformer(depth_in.view(rows * frames, config.dep_q, -1))
        audio_logits = torch.stack(
            [self.linears[k](depth_out[:, k]).view(rows, frames, -1) for k in range(config.dep_q)],
            dim=1,
        )
        no_target = torch.full_like(initial, -1)
        targets = delay_streams(codes, config.delays, no_target)
        return TeacherForced(text_logits, audio_logits, targets, temporal_out)


class TeacherForced(NamedTuple):
    """`LM.forward_delayed`'s outputs, all in the model's delayed time."""

    text_logits: torch.Tensor  # [B, T, text_card]
    audio_logits: torch.Tensor  # [B, dep_q, T, card]
    targets: torch.Tensor  # [B, streams, T], -1 where there is no target
    hidden: torch.Tensor  # [B, T, dim]: the temporal transformer's (normed) output


def frames_of(streams: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """streams [B, S, T] at the flat frame indices `frames` (into B * T), as [1, S, N]."""
    B, S, T = streams.shape
    return streams.transpose(1, 2).reshape(B * T, S)[frames].T.unsqueeze(0)


def user_ahead(codes: torch.Tensor, dep_q: int, fill: torch.Tensor | int = -1) -> torch.Tensor:
    """Aligned codes [B, streams, T] as teacher forcing must see them to match `LM.step`.

    `step` generates the assistant's frame t having heard the user's frame t (it writes the
    user's codes at the current position, as Kyutai's generator does), while `forward`
    predicts every stream's position t from positions up to t - 1. Moving the user's streams
    one frame earlier (column t holds the user's frame t + 1; `fill` [B, user streams, 1], or
    -1 for "no input", at the end) makes training condition on exactly what streaming hears."""
    out = codes.clone()
    out[:, 1 + dep_q :, :-1] = codes[:, 1 + dep_q :, 1:]
    out[:, 1 + dep_q :, -1:] = fill
    return out


def delay_streams(codes: torch.Tensor, delays: tuple[int, ...], fill: torch.Tensor) -> torch.Tensor:
    """Shift stream k of codes [B, S, T] right by delays[k] frames, filling with fill [B, S, 1]."""
    out = codes.clone()
    for k, d in enumerate(delays):
        if d:
            out[:, k, d:] = codes[:, k, :-d]
            out[:, k, :d] = fill[:, k]
    return out


def undelay(x: torch.Tensor, delays: tuple[int, ...]) -> torch.Tensor:
    """Shift stream k of x [B, S, T, ...] left by delays[k]; the vacated end becomes NaN."""
    out = x.clone()
    for k, d in enumerate(delays):
        if d:
            out[:, k, :-d] = x[:, k, d:]
            out[:, k, -d:] = float("nan")
    return out
