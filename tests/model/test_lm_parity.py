"""Our LM against the reference `moshi` package on random weights, at small configs.

Each config is written once as Kyutai's keyword config; the reference is built from it directly,
ours through `lm_config_from_kyutai`, the same translation that reads a released config.json.
"""

from __future__ import annotations

import pytest
import torch

from model.checkpoint import lm_config_from_kyutai
from model.lm import LM
from model.sampling import SamplingParams
from tests.reference import require_reference

pytestmark = pytest.mark.parity

_BASE = dict(
    dim=64,
    text_card=100,
    existing_text_padding_id=3,
    card=64,
    num_heads=4,
    num_layers=2,
    hidden_scale=4.125,
    causal=True,
    layer_scale=None,
    context=12,
    max_period=10000,
    gating="silu",
    norm="rms_norm_f32",
    positional_embedding="rope",
    depformer_dim=32,
    depformer_dim_feedforward=132,
    depformer_num_heads=2,
    depformer_num_layers=2,
    depformer_layer_scale=None,
    depformer_multi_linear=True,
    depformer_context=4,
    depformer_max_period=10000,
    depformer_gating="silu",
    depformer_pos_emb="none",
    depformer_weights_per_step=True,
)

CONFIGS = {
    # Moshi's own layout, shrunk: 4 + 4 streams, acoustic codebooks delayed by one frame.
    "moshi-like": dict(_BASE, n_q=8, dep_q=4, delays=[0, 0, 1, 1, 1, 0, 1, 1, 1]),
    # Longer delays, RoPE in the depth transformer, one shared temporal->depth projection,
    # layer scale, and a short context so the ring KV cache wraps many times.
    "delay2-rope-depth": dict(
        _BASE,
        n_q=6,
        dep_q=3,
        delays=[0, 0, 2, 2, 0, 2, 2],
        depformer_pos_emb="rope",
        depformer_multi_linear=False,
        layer_scale=0.1,
        context=5,
        depformer_num_layers=1,
    ),
    # A weight-sharing schedule in the depth transformer, LayerNorm, GELU gating, a delayed
    # text stream, and fewer user than assistant codebooks.
    "schedule-layernorm": dict(
        _BASE,
        n_q=5,
        dep_q=3,
        delays=[1, 0, 1, 2, 0, 1],
        norm="layer_norm",
        gating="gelu",
        depformer_weights_per_step_schedule=[0, 1, 1],
        depformer_gating="silu",
    ),
}


def _pair(kwargs: dict, seed: int = 0):
    require_reference()
    from moshi.models.lm import LMModel

    torch.manual_seed(seed)
    reference = LMModel(device="cpu", dtype=torch.float32, **kwargs).eval()
    ours = LM(lm_config_from_kyutai(kwargs)).eval()
    missing, unexpected = ours.load_state_dict(reference.state_dict(), strict=True)
    assert not missing and not unexpected
    return reference, ours


@pytest.mark.parametrize("name", CONFIGS)
def test_streamed_logits_and_greedy_tokens_match_reference(name: str) -> None:
    from moshi.models.lm import LMGen

    kwargs = CONFIGS[name]
    reference, ours = _pair(kwargs)
    config = ours.config
    B, frames = 2, 100
    user = torch.randint(
        0,
        config.card,
        (B, config.user_codebooks, frames),
        generator=torch.Generator().manual_seed(1),
    )

    ref_text_logits: list[torch.Tensor] = []
    ref_audio_logits: list[torch.Tensor] = []
    generator = LMGen(
        reference,
        use_sampling=False,
        on_text_logits_hook=lambda x: ref_text_logits.append(x[:, 0, 0].clone()),
    )
    depth_step = reference.forward_depformer

    def recording_depth_step(*args, **kw):
        logits = depth_step(*args, **kw)
        ref_audio_logits.append(logits[:, 0, 0].clone())
        return logits

    reference.forward_depformer = recording_depth_step  # type: ignore[method-assign]

    state = ours.init_state(B, SamplingParams.greedy())
    compared = 0
    with generator.streaming(B), torch.no_grad():
        for t in range(frames):
            expected = generator.step(user[:, :, t : t + 1])
            frame = ours.step(user[:, :, t : t + 1], state)
            torch.testing.assert_close(frame.text_logits, ref_text_logits[-1], atol=1e-5, rtol=0)
            torch.testing.assert_close(
                frame.audio_logits,
                torch.stack(ref_audio_logits[-config.dep_q :], dim=1),
                atol=1e-5,
                rtol=0,
            )
            if expected is None:
                assert not frame.ready.any()
                continue
            assert frame.ready.all()
            assert torch.equal(frame.text, expected[:, 0, 0])
            assert torch.equal(frame.audio[:, :, 0], expected[:, 1:, 0])
            compared += 1
    assert compared == frames - config.max_delay


@pytest.mark.parametrize("name", CONFIGS)
def test_teacher_forced_logits_match_reference(name: str) -> None:
    reference, ours = _pair(CONFIGS[name], seed=3)
    config = ours.config
    T = 16
    codes = torch.randint(0, config.card, (2, config.num_streams, T))
    codes[:, 0] = torch.randint(0, config.text_card, (2, T))
    with torch.no_grad():
        expected = reference(codes)
        text_logits, audio_logits = ours(codes)
    torch.testing.assert_close(
        text_logits, expected.text_logits[:, 0], atol=1e-5, rtol=0, equal_nan=True
    )
    torch.testing.assert_close(audio_logits, expected.logits, atol=1e-5, rtol=0, equal_nan=True)
