"""How a streamed step attends to its ring: the prefix kernel (FlexAttention over the filled
blocks of each slot, compiled) gives what the explicit softmax gives, slot by slot."""

from __future__ import annotations

import pytest
import torch

from model.config import TransformerConfig
from model.transformer import PREFIX_BLOCK, Transformer


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # inductor's own use of torch.jit
def test_the_prefix_kernel_attends_as_the_explicit_softmax() -> None:
    torch.manual_seed(0)
    # a ring of two blocks, the second one partial; 3 slots filling it at different paces
    config = TransformerConfig(dim=32, num_heads=2, num_layers=2, ffn_dim=64, context=200)
    transformer = Transformer(config).eval()
    explicit = transformer.init_state(3, attending="explicit")
    prefix = transformer.init_state(3, attending="prefix")
    assert prefix.attending == "prefix" and explicit.attending == "explicit"
    steps = 260  # past the context: every ring wraps
    x = torch.randn(3, steps, config.dim)
    worst = 0.0
    with torch.no_grad():
        for t in range(steps):
            active = torch.tensor([True, t % 7 != 3, True])  # slot 1 misses some frames
            if t == 150:  # slot 2's conversation starts again, mid-ring
                reset = torch.tensor([False, False, True])
                explicit.reset(reset)
                prefix.reset(reset)
            a = transformer.step(x[:, t : t + 1], explicit, active)
            b = transformer.step(x[:, t : t + 1], prefix, active)
            assert prefix.prefix is not None
            # slot 0 reads the first block only until its ring reaches the second
            assert prefix.prefix.blocks[0].item() == (1 if t < PREFIX_BLOCK else 2)
            worst = max(worst, (a - b)[active].abs().max().item())
    assert torch.equal(explicit.offset, prefix.offset)
    assert worst < 1e-5, worst


def test_prefix_falls_back_to_the_mask_where_it_cannot_apply() -> None:
    def shaped(context: int) -> Transformer:
        return Transformer(TransformerConfig(32, 2, 1, 64, context=context))

    assert shaped(100).init_state(1, attending="prefix").attending == "masked"  # one block
    long = shaped(300)
    assert long.init_state(1, max_step=2, attending="prefix").attending == "masked"
    assert long.init_state(1).attending == "explicit"  # auto, on a CPU
