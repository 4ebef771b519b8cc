"""`antiphon train export`: the trained demo model as files in app/assets/, and reading them back.

    assets/model.safetensors   LM weights (bf16 by default: half the size, loaded as fp32 on CPU)
    assets/codec.safetensors   codec weights (fp16 by default), our key names
    assets/tokenizer.model     SentencePiece text tokenizer
    assets/config.json         the LM's config in Kyutai's keyword form (read by
                               `model.checkpoint.resolve_files`) + file names + sampling
    assets/codec.json          the codec's MimiConfig (Kyutai's config.json has no codec shape)

`demo_files(assets)` returns the `ModelFiles` that `app.models` loads.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from model.checkpoint import ModelFiles, resolve_files
from model.config import LMConfig, MimiConfig, SeanetConfig, TransformerConfig
from model.errors import CheckpointError

log = logging.getLogger(__name__)

LM_FILE, CODEC_FILE, TOKENIZER_FILE = "model.safetensors", "codec.safetensors", "tokenizer.model"
CONFIG_FILE, CODEC_CONFIG_FILE = "config.json", "codec.json"
# Sampling for the demo model (Kyutai's lm_gen_config keys).
DEMO_SAMPLING = {"temp": 0.7, "temp_text": 0.6, "top_k": 50, "top_k_text": 10}
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def save_safetensors(state: dict[str, torch.Tensor], path: Path, dtype: torch.dtype) -> None:
    """Floating tensors in `dtype`, the rest as they are; contiguous, on the CPU."""
    out = {
        k: (v.to(dtype) if v.is_floating_point() else v).detach().cpu().contiguous()
        for k, v in state.items()
    }
    save_file(out, str(path))


# --- configs as files --------------------------------------------------------------------------


def mimi_config_from_dict(raw: dict[str, Any]) -> MimiConfig:
    """The inverse of `dataclasses.asdict(MimiConfig)` (JSON turns tuples into lists)."""
    try:
        seanet = dict(raw["seanet"])
        seanet["ratios"] = tuple(seanet["ratios"])
        transformer = dict(raw["transformer"])
        if transformer.get("weights_schedule") is not None:
            transformer["weights_schedule"] = tuple(transformer["weights_schedule"])
        rest = {k: v for k, v in raw.items() if k not in ("seanet", "transformer")}
        return MimiConfig(
            seanet=SeanetConfig(**seanet), transformer=TransformerConfig(**transformer), **rest
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"not a codec config ({exc})") from exc


def lm_config_to_kyutai(config: LMConfig) -> dict[str, Any]:
    """Kyutai's LM keyword config, which `model.checkpoint.lm_config_from_kyutai` reads back."""
    temporal, depth = config.temporal, config.depth
    if not depth.weights_per_step:
        raise ValueError("Kyutai's format needs weights per step in the depth transformer")
    hidden_scale = temporal.ffn_dim / temporal.dim
    assert int(hidden_scale * temporal.dim) == temporal.ffn_dim
    return {
        "dim": temporal.dim,
        "num_heads": temporal.num_heads,
        "num_layers": temporal.num_layers,
        "hidden_scale": hidden_scale,
        "context": temporal.context,
        "causal": True,
        "norm": temporal.norm,
        "gating": temporal.gating,
        "layer_scale": temporal.layer_scale,
        "positional_embedding": temporal.positions,
        "max_period": temporal.max_period,
        "depformer_dim": depth.dim,
        "depformer_num_heads": depth.num_heads,
        "depformer_num_layers": depth.num_layers,
        "depformer_dim_feedforward": depth.ffn_dim,
        "depformer_gating": depth.gating,
        "depformer_layer_scale": depth.layer_scale,
        "depformer_pos_emb": depth.positions,
        "depformer_max_period": depth.max_period,
        "depformer_weights_per_step": True,
        "depformer_weights_per_step_schedule": (
            list(depth.weights_schedule) if depth.weights_schedule is not None else None
        ),
        "depformer_multi_linear": config.depth_multi_linear,
        "text_card": config.text_card,
        "card": config.card,
        "n_q": config.n_q,
        "dep_q": config.dep_q,
        "delays": list(config.delays),
        "existing_text_padding_id": config.text_padding_id,
    }


def demo_files(assets: str | Path) -> ModelFiles:
    """The bundled model's files and configs, for `app.models` to load."""
    assets = Path(assets)
    files = resolve_files(
        lm_weights=assets / LM_FILE,
        codec_weights=assets / CODEC_FILE,
        tokenizer=assets / TOKENIZER_FILE,
        config=assets / CONFIG_FILE,
    )
    try:
        raw = json.loads((assets / CODEC_CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{assets / CODEC_CONFIG_FILE}: cannot read ({exc})") from exc
    return replace(files, codec_config=mimi_config_from_dict(raw))


# --- the command -------------------------------------------------------------------------------


def export(
    codec_run: Path,
    lm_run: Path,
    tokenizer: Path,
    out: Path,
    lm_dtype: torch.dtype = torch.bfloat16,
    codec_dtype: torch.dtype = torch.float16,
) -> dict[str, int]:
    """Write the assets; returns each file's size in bytes."""
    from safetensors.torch import load_file

    from .train_codec import CONFIG as CODEC_RUN_CONFIG
    from .train_codec import WEIGHTS as CODEC_RUN_WEIGHTS
    from .train_lm import CONFIG as LM_RUN_CONFIG
    from .train_lm import WEIGHTS as LM_RUN_WEIGHTS

    out.mkdir(parents=True, exist_ok=True)
    save_safetensors(load_file(str(lm_run / LM_RUN_WEIGHTS)), out / LM_FILE, lm_dtype)
    save_safetensors(load_file(str(codec_run / CODEC_RUN_WEIGHTS)), out / CODEC_FILE, codec_dtype)
    shutil.copyfile(tokenizer, out / TOKENIZER_FILE)
    shutil.copyfile(codec_run / CODEC_RUN_CONFIG, out / CODEC_CONFIG_FILE)
    config = json.loads((lm_run / LM_RUN_CONFIG).read_text())
    config.update(
        moshi_name=LM_FILE,
        mimi_name=CODEC_FILE,
        tokenizer_name=TOKENIZER_FILE,
        model_type="moshi",
        lm_gen_config=DEMO_SAMPLING,
    )
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=1))
    demo_files(out)  # everything written reads back
    names = (LM_FILE, CODEC_FILE, TOKENIZER_FILE, CONFIG_FILE, CODEC_CONFIG_FILE)
    return {name: (out / name).stat().st_size for name in names}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .models import ASSETS

    parser.add_argument("--codec", type=Path, required=True, help="codec run folder")
    parser.add_argument("--lm", type=Path, required=True, help="LM run folder")
    parser.add_argument("--tokenizer", type=Path, required=True, help="tokenizer.model")
    parser.add_argument(
        "--out", type=Path, default=ASSETS, help="default: app/assets, what antiphon loads"
    )
    parser.add_argument("--lm-dtype", choices=sorted(_DTYPES), default="bfloat16")
    parser.add_argument("--codec-dtype", choices=sorted(_DTYPES), default="float16")


def run(args: argparse.Namespace) -> int:
    tokenizer = args.tokenizer
    if tokenizer.is_dir():
        tokenizer = tokenizer / TOKENIZER_FILE
    sizes = export(
        args.codec, args.lm, tokenizer, args.out, _DTYPES[args.lm_dtype], _DTYPES[args.codec_dtype]
    )
    for name, size in sizes.items():
        print(f"{args.out / name}: {size / 1e6:.2f} MB")
    print(f"total {sum(sizes.values()) / 1e6:.2f} MB")
    return 0
