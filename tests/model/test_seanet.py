from typing import Any

import pytest
import torch

from model.config import SeanetConfig, mimi, tiny_mimi
from model.kyutai_names import codec_key_from_kyutai
from model.seanet import SeanetDecoder, SeanetEncoder

Seanet = SeanetEncoder | SeanetDecoder
TINY = tiny_mimi().seanet


def make(kind: type[Seanet], cfg: SeanetConfig = TINY) -> Seanet:
    torch.manual_seed(0)
    return kind(cfg)


def signal(module: Seanet, frames: int, batch: int = 2) -> torch.Tensor:
    """Random input of `frames` latent frames' worth, at the module's input rate."""
    cfg = module.cfg
    if isinstance(module, SeanetEncoder):
        return torch.randn(batch, cfg.channels, frames * cfg.hop_length)
    return torch.randn(batch, cfg.dimension, frames)


def in_hop(module: Seanet) -> int:
    """Input samples per latent frame."""
    return module.cfg.hop_length if isinstance(module, SeanetEncoder) else 1


def out_hop(module: Seanet) -> int:
    return 1 if isinstance(module, SeanetEncoder) else module.cfg.hop_length


def stream(module: Seanet, x: torch.Tensor, frames_per_chunk: int) -> torch.Tensor:
    state = module.init_state(x.shape[0])
    chunk = frames_per_chunk * in_hop(module)
    with torch.no_grad():
        outs = [module.step(x[..., t : t + chunk], state) for t in range(0, x.shape[-1], chunk)]
    return torch.cat(outs, dim=-1)


KINDS = [SeanetEncoder, SeanetDecoder]


@pytest.mark.parametrize("frames_per_chunk", [1, 3])
@pytest.mark.parametrize("kind", KINDS)
def test_stepping_equals_whole_signal(kind: type[Seanet], frames_per_chunk: int) -> None:
    module = make(kind)
    x = signal(module, 6)
    with torch.no_grad():
        whole = module(x)
    out_channels = TINY.dimension if kind is SeanetEncoder else TINY.channels
    assert whole.shape == (2, out_channels, 6 * out_hop(module))
    torch.testing.assert_close(stream(module, x, frames_per_chunk), whole, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_causal(kind: type[Seanet]) -> None:
    module = make(kind)
    x = signal(module, 6, batch=1)
    changed = x.clone()
    changed[..., 4 * in_hop(module) :] += 1.0
    with torch.no_grad():
        y, y_changed = module(x), module(changed)
    past = 4 * out_hop(module)
    assert torch.equal(y[..., :past], y_changed[..., :past])
    assert not torch.equal(y[..., past:], y_changed[..., past:])


@pytest.mark.parametrize("kind", KINDS)
def test_reset_one_slot(kind: type[Seanet]) -> None:
    module = make(kind)
    before, after = signal(module, 2, batch=3), signal(module, 2, batch=3)
    mask = torch.tensor([False, True, False])
    with torch.no_grad():
        state = module.init_state(3)
        module.step(before, state)
        state.reset(mask)
        out = module.step(after, state)

        untouched = module.init_state(3)
        module.step(before, untouched)
        out_untouched = module.step(after, untouched)
        fresh = module.step(after, module.init_state(3))

    assert torch.equal(out[~mask], out_untouched[~mask])
    assert torch.equal(out[mask], fresh[mask])
    assert not torch.equal(out[mask], out_untouched[mask])


@pytest.mark.parametrize("kind", KINDS)
def test_inactive_slot_state_unchanged(kind: type[Seanet]) -> None:
    module = make(kind)
    state = module.init_state(3)
    with torch.no_grad():
        module.step(signal(module, 1, batch=3), state)
        saved = [conv_state_tensors(s) for s in state.convs]
        module.step(signal(module, 1, batch=3), state, torch.tensor([True, False, True]))
    changed = 0
    for old, conv_state in zip(saved, state.convs, strict=True):
        for old_t, new_t in zip(old, conv_state_tensors(conv_state), strict=True):
            assert torch.equal(old_t[1], new_t[1])
            changed += not torch.equal(old_t[0], new_t[0])
    assert changed > 0


def conv_state_tensors(state: object) -> list[torch.Tensor]:
    return [t.clone() for t in vars(state).values()]


def test_wrong_length_raises() -> None:
    encoder = make(SeanetEncoder)
    with pytest.raises(ValueError, match="multiple of the hop length 960"):
        encoder(torch.randn(1, 1, 1000))
    with pytest.raises(ValueError, match=r"\[B, 32, T>0\]"):
        make(SeanetDecoder)(torch.randn(1, 16, 3))


def reference_kwargs(cfg: SeanetConfig) -> dict[str, Any]:
    """The reference constructor's keywords for Mimi's SEANet of this shape."""
    return dict(
        channels=cfg.channels,
        dimension=cfg.dimension,
        n_filters=cfg.n_filters,
        ratios=list(cfg.ratios),
        kernel_size=cfg.kernel_size,
        residual_kernel_size=cfg.residual_kernel_size,
        last_kernel_size=cfg.last_kernel_size,
        n_residual_layers=cfg.n_residual_layers,
        dilation_base=cfg.dilation_base,
        compress=cfg.compress,
        activation="ELU",
        causal=True,
        norm="none",
        pad_mode="constant",
        true_skip=True,
    )


@pytest.mark.parity
def test_released_config_matches_reference_kwargs() -> None:
    from moshi.models import loaders

    ref = {k: v for k, v in loaders._seanet_kwargs.items() if k != "disable_norm_outer_blocks"}
    assert ref == reference_kwargs(mimi().seanet)


@pytest.mark.parity
@pytest.mark.parametrize("cfg", [TINY, mimi().seanet], ids=["tiny", "released"])
@pytest.mark.parametrize("kind", KINDS)
def test_matches_reference(kind: type[Seanet], cfg: SeanetConfig) -> None:
    from moshi.modules import seanet

    ref_kind = seanet.SEANetEncoder if kind is SeanetEncoder else seanet.SEANetDecoder
    torch.manual_seed(1)
    ref = ref_kind(**reference_kwargs(cfg))
    ours = kind(cfg)
    ours.load_state_dict(
        {codec_key_from_kyutai(k): v for k, v in ref.state_dict().items()}, strict=True
    )
    frames = 3
    x = signal(ours, frames)
    chunk = in_hop(ours)
    with torch.no_grad():
        expected = ref(x)
        torch.testing.assert_close(ours(x), expected, rtol=0, atol=1e-5)
        with ref.streaming(2):
            ref_streamed = torch.cat(
                [ref(x[..., t : t + chunk]) for t in range(0, x.shape[-1], chunk)], -1
            )
    torch.testing.assert_close(stream(ours, x, 1), ref_streamed, rtol=0, atol=1e-5)
    assert expected.abs().max() > 1e-3  # the comparison is not trivially between zeros
