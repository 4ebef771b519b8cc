"""Our LM's own streaming behaviour: delays, per-slot reset and skip, batch independence,
long conversations past the context."""

from __future__ import annotations

import pytest
import torch

from model.config import tiny_lm
from model.lm import LM, NOT_READY, user_ahead
from model.sampling import SamplingParams


@pytest.fixture(scope="module")
def lm() -> LM:
    torch.manual_seed(0)
    return LM(tiny_lm()).eval()


def _user(batch: int, frames: int, lm: LM, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, lm.config.card, (batch, lm.config.user_codebooks, frames), generator=g)


def _run(lm: LM, user: torch.Tensor, params: SamplingParams, batch: int | None = None):
    state = lm.init_state(batch or user.shape[0], params)
    return [lm.step(user[:, :, t : t + 1], state) for t in range(user.shape[2])]


def test_nothing_comes_out_until_the_delays_have_passed(lm: LM) -> None:
    frames = _run(lm, _user(1, 4, lm), SamplingParams.greedy())
    assert lm.config.max_delay == 1
    assert not frames[0].ready.any()
    assert (frames[0].text == NOT_READY).all() and (frames[0].audio == NOT_READY).all()
    assert all(f.ready.all() for f in frames[1:])
    assert frames[1].audio.shape == (1, lm.config.dep_q, 1)
    assert ((frames[1].audio >= 0) & (frames[1].audio < lm.config.card)).all()


def test_a_conversation_runs_far_past_the_context(lm: LM) -> None:
    context = lm.config.temporal.context
    assert context is not None
    frames = _run(lm, _user(1, 5 * context, lm), SamplingParams(seed=1))
    assert all(f.ready.all() for f in frames[1:])
    assert all(torch.isfinite(f.text_logits).all() for f in frames)


def test_reset_one_slot_leaves_the_others_bit_identical(lm: LM) -> None:
    user = _user(3, 12, lm, seed=2)
    params = SamplingParams(seed=5)
    state, untouched = lm.init_state(3, params), lm.init_state(3, params)
    mask = torch.tensor([False, True, False])
    for t in range(12):
        if t == 6:
            state.reset(mask)
        out = lm.step(user[:, :, t : t + 1], state)
        expected = lm.step(user[:, :, t : t + 1], untouched)
        assert torch.equal(out.text_logits[[0, 2]], expected.text_logits[[0, 2]])
        assert torch.equal(out.audio[[0, 2]], expected.audio[[0, 2]])
        if t == 6:
            assert not out.ready[1] and out.ready[[0, 2]].all()  # slot 1 starts over
    # After the reset slot 1 is a fresh conversation that began at frame 6.
    fresh = _run(lm, user[1:2, :, 6:], params)
    torch.testing.assert_close(out.text_logits[1:2], fresh[-1].text_logits, atol=1e-5, rtol=0)
    assert torch.equal(out.audio[1:2], fresh[-1].audio)


def test_a_slot_whose_frame_did_not_arrive_is_skipped(lm: LM) -> None:
    user = _user(2, 8, lm, seed=3)
    params = SamplingParams(seed=7)
    state = lm.init_state(2, params)
    outputs = []
    for t in range(8):
        active = torch.tensor([True, t != 3])  # slot 1 misses frame 3
        outputs.append(lm.step(user[:, :, t : t + 1], state, active))
    assert not outputs[3].ready[1] and (outputs[3].audio[1] == NOT_READY).all()
    # Slot 0 is as if alone; slot 1 as if frame 3 never existed.
    alone = _run(lm, user[0:1], params)
    for t in range(8):
        assert torch.equal(outputs[t].audio[0:1], alone[t].audio)
    kept = [t for t in range(8) if t != 3]
    skipping = _run(lm, user[1:2, :, kept], params)
    for i, t in enumerate(kept):
        assert torch.equal(outputs[t].audio[1:2], skipping[i].audio)


def test_a_session_does_not_depend_on_its_batch_neighbours(lm: LM) -> None:
    """Same input and seed → same tokens, alone or next to other sessions with other seeds."""
    user = _user(4, 10, lm, seed=4)
    state = lm.init_state(4, SamplingParams())
    for slot, seed in enumerate((11, 12, 13, 14)):
        state.sampling.set(slot, SamplingParams(seed=seed, audio_top_k=0 if slot == 2 else 250))
    batched = [lm.step(user[:, :, t : t + 1], state) for t in range(10)]
    alone = _run(lm, user[1:2], SamplingParams(seed=12))
    for t in range(10):
        assert torch.equal(batched[t].text[1:2], alone[t].text)
        assert torch.equal(batched[t].audio[1:2], alone[t].audio)


def test_sampling_parameters_change_per_session_without_rebuilding(lm: LM) -> None:
    user = _user(2, 20, lm, seed=5)
    state = lm.init_state(2, SamplingParams(seed=3, text_temperature=1.0, text_top_k=0))
    outputs = []
    for t in range(20):
        if t == 2:
            state.sampling.set(0, SamplingParams.greedy())
        outputs.append(lm.step(user[:, :, t : t + 1], state))
    # The text token read out at frame t was drawn at frame t - 1 (max delay 1).
    drawn_greedy = [
        bool(outputs[t].text[slot] == outputs[t - 1].text_logits[slot].argmax())
        for slot in (0, 1)
        for t in range(3, 20)
    ]
    assert all(drawn_greedy[:17])  # slot 0: greedy from frame 2 on
    assert not all(drawn_greedy[17:])  # slot 1: still sampling at temperature 1


def test_wrong_user_codes_are_refused(lm: LM) -> None:
    state = lm.init_state(1)
    with pytest.raises(ValueError, match="user codebooks"):
        lm.step(torch.zeros(1, 1, 1, dtype=torch.long), state)
    with pytest.raises(ValueError, match=r"\[1, 4, 1\]"):
        lm.step(torch.zeros(2, 4, 1, dtype=torch.long), state)


def _greedy_conversation(lm: LM, frames: int) -> tuple[torch.Tensor, list]:
    """Greedy steps over random user codes; returns the codes [1, streams, frames] that
    training would see for this conversation, and every step's output.

    Streaming generates the assistant's frame t having heard the user's frame t; teacher
    forcing predicts position t from the streams up to t - 1. So in training codes the user's
    stream is one frame ahead: user column t holds the user's frame t + 1 (`user_ahead`)."""
    user = _user(1, frames + 2, lm, seed=3)
    steps = _run(lm, user, SamplingParams.greedy())
    text = torch.stack([steps[t + 1].text for t in range(frames)], dim=-1)  # [1, frames]
    audio = torch.cat([steps[t + 1].audio for t in range(frames)], dim=-1)  # [1, dep_q, frames]
    codes = torch.cat([text[:, None], audio, user[:, :, :frames]], dim=1)
    return user_ahead(codes, lm.config.dep_q, fill=user[:, :, frames : frames + 1]), steps


def test_training_logits_equal_streamed_logits_past_the_context(lm: LM) -> None:
    """The training path (whole sequence, delayed time) computes what streaming computes."""
    context = lm.config.temporal.context
    assert context is not None
    frames = context + 9
    codes, steps = _greedy_conversation(lm, frames)
    with torch.no_grad():
        text_logits, audio_logits, targets, _ = lm.forward_delayed(codes)
    for t in range(frames):
        torch.testing.assert_close(text_logits[0, t], steps[t].text_logits[0], atol=2e-5, rtol=0)
        if t >= lm.config.max_delay:  # before that, streaming sampled what training ignores
            torch.testing.assert_close(
                audio_logits[0, :, t], steps[t].audio_logits[0], atol=2e-5, rtol=0
            )
    # the delayed targets are the codes shifted by each stream's delay, with no target before
    for k, delay in enumerate(lm.config.delays):
        assert (targets[0, k, :delay] == -1).all()
        assert torch.equal(targets[0, k, delay:], codes[0, k, : frames - delay])


def test_every_depth_weight_set_learns_through_the_training_forward(lm: LM) -> None:
    codes, _ = _greedy_conversation(lm, 6)
    model = LM(lm.config)
    model.load_state_dict(lm.state_dict())
    audio_logits = model.forward_delayed(codes).audio_logits
    audio_logits.logsumexp(-1).sum().backward()
    for layer in model.depformer.layers:
        for projection in layer.self_attn.in_projs:  # type: ignore[union-attr]
            assert projection.weight.grad is not None and projection.weight.grad.abs().sum() > 0


def test_the_delayed_loss_equals_the_aligned_loss(lm: LM) -> None:
    """Training on delayed targets is the same loss as on undelayed logits, gradients too."""
    import torch.nn.functional as F

    from app.train.lm import lm_loss
    from app.train.lm_data import IGNORE

    codes, _ = _greedy_conversation(lm, 10)
    codes[:, :, 8:] = IGNORE  # a padded window
    model = LM(lm.config)
    model.load_state_dict(lm.state_dict())
    loss, _ = lm_loss(model, codes, pad_weight=1.0, first_codebook_weight=1.0)
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)

    text_logits, audio_logits = model(codes)  # aligned; NaN where a delay pushed out
    text_ce = F.cross_entropy(text_logits[0], codes[0, 0], ignore_index=IGNORE)
    audio_target = codes[:, 1 : 1 + lm.config.dep_q].clone()
    audio_target[torch.isnan(audio_logits[..., 0])] = IGNORE
    audio_logits = torch.nan_to_num(audio_logits, nan=0.0)
    audio_ce = torch.stack(
        [
            F.cross_entropy(audio_logits[0, k], audio_target[0, k], ignore_index=IGNORE)
            for k in range(lm.config.dep_q)
        ]
    ).mean()
    aligned = text_ce + audio_ce
    torch.testing.assert_close(loss, aligned, atol=1e-6, rtol=1e-6)
    for mine, theirs in zip(
        grads,
        torch.autograd.grad(aligned, list(model.parameters()), allow_unused=True),
        strict=True,
    ):
        if mine is None or theirs is None:
            assert mine is None or not mine.any()
            continue
        torch.testing.assert_close(mine, theirs, atol=1e-6, rtol=1e-5)


def test_depth_on_sampled_frames_is_the_full_depth_at_those_frames(lm: LM) -> None:
    """`depth_frames` runs the depth transformer on some frames only; its logits there are the
    full pass's, and the sampled audio loss is the full loss restricted to those frames."""
    import torch.nn.functional as F

    from app.train.lm import lm_loss

    first, _ = _greedy_conversation(lm, 12)
    second, _ = _greedy_conversation(lm, 12)
    second[:, 1:] = second[:, 1:].roll(3, dims=2)  # a second, different row of the batch
    codes = torch.cat([first, second])
    B, _, T = codes.shape
    frames = torch.tensor([1, 4, 5, 11, 12, 17, 23])  # flat indices into B * T: both rows
    with torch.no_grad():
        full = lm.forward_delayed(codes)
        sampled = lm.forward_delayed(codes, frames)
        torch.testing.assert_close(sampled.text_logits, full.text_logits, atol=0, rtol=0)
        assert sampled.audio_logits.shape == (1, lm.config.dep_q, len(frames), lm.config.card)
        for n, flat in enumerate(frames.tolist()):
            b, t = divmod(flat, T)
            torch.testing.assert_close(
                sampled.audio_logits[0, :, n], full.audio_logits[b, :, t], atol=2e-5, rtol=0
            )

        loss, metrics = lm_loss(lm, codes, first_codebook_weight=1.0, depth_frames=frames)
        dep_q = lm.config.dep_q
        picked = full.targets[:, 1 : 1 + dep_q].transpose(1, 2).reshape(B * T, dep_q)[frames]
        logits = full.audio_logits.permute(0, 2, 1, 3).reshape(B * T, dep_q, -1)[frames]
        expected = torch.stack(
            [F.cross_entropy(logits[:, k], picked[:, k], ignore_index=-1) for k in range(dep_q)]
        ).mean()
        assert abs(metrics["audio"] - expected.item()) < 1e-5
        full_loss, full_metrics = lm_loss(lm, codes, first_codebook_weight=1.0)
        assert metrics["text"] == full_metrics["text"]
        assert abs(full_metrics["audio"] - metrics["audio"]) > 1e-4  # a subset, not the whole
