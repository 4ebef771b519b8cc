import pytest
import torch

from model.config import mimi
from model.kyutai_names import codec_key_from_kyutai, codec_key_to_kyutai
from model.quantizer import SplitResidualVQ
from model.seanet import SeanetDecoder, SeanetEncoder
from tests.reference import require_reference

EXAMPLES = [
    ("encoder.model.3.conv.conv.weight", "encoder.model.3.conv.weight"),
    ("encoder.model.1.block.1.conv.conv.bias", "encoder.model.1.block.1.conv.bias"),
    ("decoder.model.2.convtr.convtr.weight", "decoder.model.2.convtr.weight"),
    ("downsample.conv.conv.conv.weight", "downsample.conv.weight"),
    ("upsample.convtr.convtr.convtr.weight", "upsample.convtr.weight"),
    (
        "encoder_transformer.transformer.layers.0.self_attn.in_projs.0.weight",
        "encoder_transformer.layers.0.self_attn.in_projs.0.weight",
    ),
    (
        "decoder_transformer.transformer.layers.7.layer_scale_2.scale",
        "decoder_transformer.layers.7.layer_scale_2.scale",
    ),
    (
        "quantizer.rvq_first.vq.layers.0._codebook.embedding_sum",
        "quantizer.rvq_first.codebooks.0.embedding_sum",
    ),
    (
        "quantizer.rvq_rest.vq.layers.30._codebook._initialized",
        "quantizer.rvq_rest.codebooks.30._initialized",
    ),
    ("quantizer.rvq_rest.input_proj.weight", "quantizer.rvq_rest.input_proj.weight"),
]


@pytest.mark.parametrize(("kyutai", "ours"), EXAMPLES)
def test_examples(kyutai: str, ours: str) -> None:
    assert codec_key_from_kyutai(kyutai) == ours
    assert codec_key_to_kyutai(ours) == kyutai


@pytest.fixture(scope="module")
def released_mimi_state() -> dict[str, torch.Tensor]:
    require_reference()
    from moshi.models import loaders

    return loaders.get_mimi(None, device="cpu").state_dict()


@pytest.mark.parity
def test_inverse_over_released_mimi_keys(released_mimi_state: dict[str, torch.Tensor]) -> None:
    keys = list(released_mimi_state)
    assert len(keys) == 318
    ours = [codec_key_from_kyutai(k) for k in keys]
    assert len(set(ours)) == len(keys)
    assert [codec_key_to_kyutai(k) for k in ours] == keys
    # Every Kyutai wrapper level is gone on our side.
    assert not [k for k in ours if ".conv.conv" in k or ".convtr.convtr" in k]
    assert not [k for k in ours if "transformer.transformer" in k or "._codebook." in k]


@pytest.mark.parity
def test_released_weights_load_into_our_modules(
    released_mimi_state: dict[str, torch.Tensor],
) -> None:
    cfg = mimi()
    renamed = {codec_key_from_kyutai(k): v for k, v in released_mimi_state.items()}
    modules = {
        "encoder": SeanetEncoder(cfg.seanet),
        "decoder": SeanetDecoder(cfg.seanet),
        "quantizer": SplitResidualVQ(cfg),
    }
    for prefix, module in modules.items():
        part = {
            k.removeprefix(f"{prefix}."): v
            for k, v in renamed.items()
            if k.startswith(f"{prefix}.")
        }
        module.load_state_dict(part, strict=True)
