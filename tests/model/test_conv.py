from typing import Any

import pytest
import torch

from model.conv import CausalConv1d, CausalConvTranspose1d, PadMode

Conv = CausalConv1d | CausalConvTranspose1d

# (kernel, stride, dilation, pad_mode)
CONV_CASES: list[tuple[int, int, int, PadMode]] = [
    (7, 1, 1, "constant"),
    (3, 1, 4, "constant"),
    (1, 1, 1, "constant"),
    (8, 4, 1, "constant"),
    (4, 2, 1, "replicate"),
    (5, 3, 1, "replicate"),
]
# (kernel, stride)
CONVTR_CASES = [(8, 4), (4, 2), (3, 3), (16, 3), (5, 1)]


def make_conv(kernel: int, stride: int, dilation: int, pad_mode: PadMode) -> CausalConv1d:
    torch.manual_seed(0)
    return CausalConv1d(3, 5, kernel, stride=stride, dilation=dilation, pad_mode=pad_mode)


def make_convtr(kernel: int, stride: int, bias: bool = True) -> CausalConvTranspose1d:
    torch.manual_seed(0)
    return CausalConvTranspose1d(3, 5, kernel, stride, bias=bias)


def in_stride(module: Conv) -> int:
    """Input samples per output frame."""
    return module.stride if isinstance(module, CausalConv1d) else 1


def stream(module: Conv, x: torch.Tensor, frames_per_chunk: int) -> torch.Tensor:
    state: Any = module.init_state(x.shape[0])
    chunk = frames_per_chunk * in_stride(module)
    ys = [module.step(x[..., t : t + chunk], state) for t in range(0, x.shape[-1], chunk)]
    return torch.cat(ys, dim=-1)


def describe(module: Conv) -> str:
    if isinstance(module, CausalConv1d):
        c = module.conv
        return f"conv-k{c.kernel_size[0]}-s{c.stride[0]}-d{c.dilation[0]}-{module.pad_mode}"
    return f"convtr-k{module.convtr.kernel_size[0]}-s{module.stride}"


def all_modules() -> list[Conv]:
    convs: list[Conv] = [make_conv(*case) for case in CONV_CASES]
    return convs + [make_convtr(*case) for case in CONVTR_CASES]


@pytest.mark.parametrize("frames_per_chunk", [1, 3])
@pytest.mark.parametrize("module", all_modules(), ids=describe)
def test_stepping_equals_whole_signal(module: Conv, frames_per_chunk: int) -> None:
    x = torch.randn(2, 3, 12 * in_stride(module))
    whole = module(x)
    expected_length = 12 if isinstance(module, CausalConv1d) else 12 * module.stride
    assert whole.shape == (2, 5, expected_length)
    torch.testing.assert_close(stream(module, x, frames_per_chunk), whole, rtol=0, atol=1e-6)


@pytest.mark.parametrize("module", all_modules(), ids=describe)
def test_causal(module: Conv) -> None:
    s = in_stride(module)
    x = torch.randn(1, 3, 12 * s)
    changed = x.clone()
    changed[..., 7 * s :] = torch.randn(1, 3, 5 * s)
    out_frames = 7 if isinstance(module, CausalConv1d) else 7 * module.stride
    assert torch.equal(module(x)[..., :out_frames], module(changed)[..., :out_frames])
    assert not torch.equal(module(x), module(changed))


def test_replicate_pads_with_first_sample() -> None:
    conv = make_conv(4, 2, 1, "replicate")  # history of 2 samples
    x = torch.randn(1, 3, 6)
    padded = torch.cat([x[..., :1], x[..., :1], x], dim=-1)
    torch.testing.assert_close(conv(x), conv.conv(padded))
    state = conv.init_state(1)
    conv.step(x[..., :2], state)
    assert not state.first.any()


def test_convtr_without_bias_streams() -> None:
    convtr = make_convtr(8, 4, bias=False)
    x = torch.randn(2, 3, 6)
    torch.testing.assert_close(stream(convtr, x, 1), convtr(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "module", [make_conv(4, 2, 1, "replicate"), make_conv(3, 1, 2, "constant"), make_convtr(8, 4)]
)
def test_reset_one_slot(module: Conv) -> None:
    s = in_stride(module)
    before = torch.randn(3, 3, 4 * s)
    after = torch.randn(3, 3, 4 * s)
    mask = torch.tensor([False, True, False])

    state: Any = module.init_state(3)
    module.step(before, state)
    state.reset(mask)
    out = module.step(after, state)

    untouched: Any = module.init_state(3)
    module.step(before, untouched)
    out_untouched = module.step(after, untouched)
    fresh = module.step(after, module.init_state(3))  # type: ignore[arg-type]

    assert torch.equal(out[~mask], out_untouched[~mask])
    assert torch.equal(out[mask], fresh[mask])
    assert not torch.equal(out[mask], out_untouched[mask])


@pytest.mark.parametrize("module", [make_conv(4, 2, 1, "replicate"), make_convtr(8, 4)])
def test_inactive_slot_state_unchanged(module: Conv) -> None:
    s = in_stride(module)
    state: Any = module.init_state(3)
    module.step(torch.randn(3, 3, 2 * s), state)
    saved = [t.clone() for t in vars(state).values()]
    active = torch.tensor([True, False, True])
    module.step(torch.randn(3, 3, 2 * s), state, active)
    for old, new in zip(saved, vars(state).values(), strict=True):
        assert torch.equal(old[1], new[1])
        assert new.dtype == torch.bool or not torch.equal(old[active], new[active])


def test_replicate_inactive_slot_stays_first() -> None:
    conv = make_conv(4, 2, 1, "replicate")
    state = conv.init_state(2)
    conv.step(torch.randn(2, 3, 2), state, torch.tensor([True, False]))
    assert state.first.tolist() == [False, True]


def test_wrong_input_raises() -> None:
    conv = make_conv(8, 4, 1, "constant")
    with pytest.raises(ValueError, match="multiple of the stride 4"):
        conv(torch.randn(1, 3, 10))
    with pytest.raises(ValueError, match=r"\[B, 3, T\]"):
        conv(torch.randn(1, 4, 8))
    with pytest.raises(ValueError, match="state batch"):
        conv.step(torch.randn(2, 3, 8), conv.init_state(1))


@pytest.mark.parity
@pytest.mark.parametrize(("kernel", "stride", "dilation", "pad_mode"), CONV_CASES)
def test_conv_matches_reference(kernel: int, stride: int, dilation: int, pad_mode: PadMode) -> None:
    from moshi.modules.conv import StreamingConv1d

    ours = make_conv(kernel, stride, dilation, pad_mode)
    ref = StreamingConv1d(3, 5, kernel, stride, dilation, causal=True, pad_mode=pad_mode)
    ref.conv.conv.load_state_dict(ours.conv.state_dict())
    x = torch.randn(2, 3, 6 * stride)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=1e-6)
        with ref.streaming(2):
            ref_streamed = torch.cat(
                [ref(x[..., t : t + stride]) for t in range(0, 6 * stride, stride)], -1
            )
    torch.testing.assert_close(stream(ours, x, 1), ref_streamed, rtol=0, atol=1e-6)


@pytest.mark.parity
@pytest.mark.parametrize(("kernel", "stride"), CONVTR_CASES)
def test_convtr_matches_reference(kernel: int, stride: int) -> None:
    from moshi.modules.conv import StreamingConvTranspose1d

    ours = make_convtr(kernel, stride)
    ref = StreamingConvTranspose1d(3, 5, kernel, stride, causal=True)
    ref.convtr.convtr.load_state_dict(ours.convtr.state_dict())
    x = torch.randn(2, 3, 6)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=1e-6)
        with ref.streaming(2):
            ref_streamed = torch.cat([ref(x[..., t : t + 1]) for t in range(6)], -1)
    torch.testing.assert_close(stream(ours, x, 1), ref_streamed, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("kernel", "stride", "dilation"), [(16, 8, 1), (3, 1, 2), (7, 1, 1)])
def test_short_steps_run_as_one_matmul_with_the_convolution_s_sums(kernel, stride, dilation):
    """Steps of few output frames gather windows and multiply once (`_windowed_conv`)."""
    from model.conv import MATMUL_MAX_FRAMES, _windowed_conv

    torch.manual_seed(0)
    conv = torch.nn.Conv1d(24, 40, kernel, stride=stride, dilation=dilation)
    length = (kernel - 1) * dilation + 1 + 3 * stride  # 4 output frames
    x = torch.randn(2, 24, length)
    torch.testing.assert_close(_windowed_conv(conv, x), conv(x), rtol=0, atol=1e-5)
    assert MATMUL_MAX_FRAMES >= 4  # so the streaming steps of tests above take this path too
