"""`antiphon train export`: the trained demo model as a bundle in app/assets/.

The files (`model.bundle` describes them and reads them back): the LM's weights in bf16 by
default (half the size, loaded as fp32 on a CPU), the codec's in fp16, the tokenizer, the LM's
config in Kyutai's keyword form with the file names and the demo's sampling, and codec.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from app.core.models import ASSETS
from model.bundle import (
    CODEC_CONFIG_FILE,
    CODEC_FILE,
    CONFIG_FILE,
    FILES,
    LM_FILE,
    TOKENIZER_FILE,
    bundle_files,
    save_safetensors,
)
from model.errors import CheckpointError

from .codec import CONFIG as CODEC_RUN_CONFIG
from .codec import WEIGHTS as CODEC_RUN_WEIGHTS
from .lm_start import CONFIG as LM_RUN_CONFIG
from .lm_start import WEIGHTS as LM_RUN_WEIGHTS

log = logging.getLogger(__name__)

# Sampling for the demo model (Kyutai's lm_gen_config keys).
DEMO_SAMPLING = {"temp": 0.7, "temp_text": 0.6, "top_k": 50, "top_k_text": 10}
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


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
    out.mkdir(parents=True, exist_ok=True)
    save_safetensors(_read_weights(lm_run / LM_RUN_WEIGHTS), out / LM_FILE, lm_dtype)
    save_safetensors(_read_weights(codec_run / CODEC_RUN_WEIGHTS), out / CODEC_FILE, codec_dtype)
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
    bundle_files(out)  # everything written reads back
    return {name: (out / name).stat().st_size for name in FILES}


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A run's weights, or one line that says which file is damaged or missing."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(
            f"{path}: missing, or not a whole safetensors file ({exc}); export another run, "
            "or let the run write it again (the same training command resumes and saves it)"
        ) from exc


def add_arguments(parser: argparse.ArgumentParser) -> None:
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
