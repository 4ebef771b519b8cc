"""A bundled model's file set: the demo model as it ships (app/assets/) or any export of it.

    model.safetensors   LM weights (our key names; bf16 as exported, loaded as fp32 on a CPU)
    codec.safetensors   codec weights (our key names; fp16 as exported)
    tokenizer.model     SentencePiece text tokenizer
    config.json         the LM's config in Kyutai's keyword form (`model.kyutai_config`), the
                        file names and the sampling (`lm_gen_config`), as a released config.json
    codec.json          the codec's MimiConfig (`dataclasses.asdict`): Kyutai's config.json has
                        no codec shape
    MODEL_CARD.md       (optional) what the model can do and how well, measured
                        (`antiphon train card`); its "In one line" is what `talk` says at start

`bundle_files(folder)` returns the `ModelFiles` to load; `bundle_summary(folder)` the card's
line; `save_safetensors` writes weights in a chosen precision.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from .checkpoint import ModelFiles, resolve_files
from .config import MimiConfig, SeanetConfig, TransformerConfig
from .errors import CheckpointError

LM_FILE, CODEC_FILE, TOKENIZER_FILE = "model.safetensors", "codec.safetensors", "tokenizer.model"
CONFIG_FILE, CODEC_CONFIG_FILE = "config.json", "codec.json"
CARD_FILE, SUMMARY_PREFIX = "MODEL_CARD.md", "**In one line:** "
FILES = (LM_FILE, CODEC_FILE, TOKENIZER_FILE, CONFIG_FILE, CODEC_CONFIG_FILE)


def save_safetensors(state: dict[str, torch.Tensor], path: Path, dtype: torch.dtype) -> None:
    """Floating tensors in `dtype`, the rest as they are; contiguous, on the CPU."""
    out = {
        k: (v.to(dtype) if v.is_floating_point() else v).detach().cpu().contiguous()
        for k, v in state.items()
    }
    save_file(out, str(path))
    # safetensors writes 0600; model files are for whoever runs antiphon to read, and a wheel
    # built from the folder keeps the mode: readable by all, on purpose, whatever the umask
    path.chmod(0o644)


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


def bundle_files(folder: str | Path) -> ModelFiles:
    """A bundle's files and configs, ready for `load_codec` / `load_lm`."""
    folder = Path(folder)
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise CheckpointError(
            f"{folder}: an incomplete model folder, {', '.join(missing)} missing (`antiphon "
            f"train export --out {folder}` writes them all)"
        )
    files = resolve_files(
        lm_weights=folder / LM_FILE,
        codec_weights=folder / CODEC_FILE,
        tokenizer=folder / TOKENIZER_FILE,
        config=folder / CONFIG_FILE,
    )
    try:
        raw = json.loads((folder / CODEC_CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{folder / CODEC_CONFIG_FILE}: cannot read ({exc})") from exc
    return replace(files, codec_config=mimi_config_from_dict(raw))


def bundle_summary(folder: str | Path) -> str | None:
    """The model card's "In one line" (what the model does and how often it is right), or None
    where the folder has no card or the card no such line."""
    try:
        lines = (Path(folder) / CARD_FILE).read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    for line in lines:
        if line.startswith(SUMMARY_PREFIX):
            return line[len(SUMMARY_PREFIX) :].strip().rstrip(".") or None
    return None


__all__ = [
    "CARD_FILE",
    "CODEC_CONFIG_FILE",
    "CODEC_FILE",
    "CONFIG_FILE",
    "FILES",
    "LM_FILE",
    "SUMMARY_PREFIX",
    "TOKENIZER_FILE",
    "bundle_files",
    "bundle_summary",
    "mimi_config_from_dict",
    "save_safetensors",
]
