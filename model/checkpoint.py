"""Loading Kyutai's released files unchanged, and our own.

Everything from outside is checked here, once: `config.json` keyword configs become our frozen
configs; safetensors files are compared tensor by tensor with the module before anything is
loaded, so a missing, truncated or mismatched file names the file, the tensor and both shapes.
Only safetensors are read (no pickle from files of unknown origin).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from .codec import Codec
from .config import LMConfig, MimiConfig, TransformerConfig, mimi
from .errors import CheckpointError, ConfigError
from .kyutai_names import codec_key_from_kyutai
from .lm import LM
from .sampling import SamplingParams

log = logging.getLogger(__name__)

LM_FILE = "model.safetensors"
CODEC_FILE = "tokenizer-e351c8d8-checkpoint125.safetensors"
TOKENIZER_FILE = "tokenizer_spm_32k_3.model"
CONFIG_FILE = "config.json"

# config.json keys that describe files or generation, not the LM's shape.
_FILE_KEYS = {"moshi_name", "mimi_name", "tokenizer_name", "model_type", "lm_gen_config"}
# Keys that do not change the inference graph (the depth context is ignored by Kyutai's code too).
_IGNORED_KEYS = {
    "depformer_context",
    "depformer_causal",
    "model_id",
    "existing_text_end_padding_id",
}


@dataclass(frozen=True)
class ModelFiles:
    """Where a model's files are and what they hold."""

    lm_weights: Path
    codec_weights: Path
    tokenizer: Path
    lm_config: LMConfig
    codec_config: MimiConfig
    sampling: SamplingParams = field(default_factory=SamplingParams)
    model_type: str = "moshi"


def lm_config_from_kyutai(raw: dict[str, Any]) -> LMConfig:
    """Translate Kyutai's LM keyword config (config.json minus file keys) into an LMConfig."""
    kw = {k: v for k, v in raw.items() if k not in _FILE_KEYS | _IGNORED_KEYS}

    def take(key: str, default: Any = None) -> Any:
        return kw.pop(key, default)

    if not take("causal", True):
        raise ConfigError("config.json: only causal LMs can stream (causal must be true)")
    dim, layer_scale = take("dim"), take("layer_scale")
    gating, max_period = take("gating", "none"), take("max_period", 10_000)
    norm, positions = take("norm", "layer_norm"), take("positional_embedding", "sin")
    hidden_scale = take("hidden_scale", 4)
    depth_dim = take("depformer_dim", 256)
    depth_ffn = take("depformer_dim_feedforward") or int(hidden_scale * depth_dim)
    depth_positions = take("depformer_pos_emb", "sin")
    for name, value in (
        ("positional_embedding", positions),
        ("depformer_pos_emb", depth_positions),
    ):
        if value not in ("rope", "none"):
            raise ConfigError(f"config.json: {name}={value!r} is not supported (rope or none)")
    n_q, dep_q = take("n_q", 8), take("dep_q", 8)
    schedule = take("depformer_weights_per_step_schedule")
    weights_per_step = dep_q if take("depformer_weights_per_step", False) else 0
    if not weights_per_step:
        raise ConfigError(
            "config.json: depformer_weights_per_step=false cannot stream "
            "(Kyutai's code cannot either); no released model uses it"
        )
    try:
        config = LMConfig(
            temporal=TransformerConfig(
                dim=dim,
                num_heads=take("num_heads"),
                num_layers=take("num_layers"),
                ffn_dim=int(hidden_scale * dim),
                norm=norm,
                gating=gating,
                layer_scale=layer_scale,
                positions=positions,
                max_period=max_period,
                context=take("context"),
            ),
            depth=TransformerConfig(
                dim=depth_dim,
                num_heads=take("depformer_num_heads"),
                num_layers=take("depformer_num_layers"),
                ffn_dim=depth_ffn,
                norm=norm,
                gating=take("depformer_gating") or gating,
                layer_scale=take("depformer_layer_scale", layer_scale),
                positions=depth_positions,
                max_period=take("depformer_max_period", max_period),
                weights_per_step=weights_per_step,
                weights_schedule=tuple(schedule) if schedule is not None else None,
            ),
            text_card=take("text_card", 32_000),
            card=take("card", 1024),
            n_q=n_q,
            dep_q=dep_q,
            delays=tuple(take("delays", [0] * (n_q + 1))),
            text_padding_id=take("existing_text_padding_id", 3),
            depth_multi_linear=take("depformer_multi_linear", False),
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config.json: inconsistent LM config: {exc}") from exc
    if config.temporal.context is None:
        raise ConfigError("config.json: the LM needs a `context` to stream")
    if kw:
        raise ConfigError(
            f"config.json: options this version does not implement: {sorted(kw)}. "
            "Moshi-style models (moshiko, moshika) are supported."
        )
    return config


def sampling_from_kyutai(lm_gen_config: dict[str, Any]) -> SamplingParams:
    defaults = SamplingParams()
    return SamplingParams(
        text_temperature=lm_gen_config.get("temp_text", defaults.text_temperature),
        text_top_k=lm_gen_config.get("top_k_text", defaults.text_top_k),
        audio_temperature=lm_gen_config.get("temp", defaults.audio_temperature),
        audio_top_k=lm_gen_config.get("top_k", defaults.audio_top_k),
    )


def _hf_download(repo: str, filename: str) -> Path:
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as exc:
        raise CheckpointError(
            f"--hf-repo {repo} needs huggingface_hub (pip install 'antiphon[hf]'), "
            "or pass local files with --moshi-weight, --mimi-weight, --tokenizer and --config"
        ) from exc
    try:
        return Path(hf_hub_download(repo, filename))
    except LocalEntryNotFoundError as exc:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
        hint = (
            "offline mode is on (HF_HUB_OFFLINE): download it once while online"
            if offline
            else "check the network or download it into the cache first"
        )
        raise CheckpointError(
            f"{repo}/{filename} is not in the Hugging Face cache; {hint}"
        ) from exc
    except Exception as exc:  # the hub raises many kinds; all mean "could not get the file"
        raise CheckpointError(f"could not get {filename} from {repo}: {exc}") from exc


def resolve_files(
    hf_repo: str | None = None,
    lm_weights: str | Path | None = None,
    codec_weights: str | Path | None = None,
    tokenizer: str | Path | None = None,
    config: str | Path | None = None,
) -> ModelFiles:
    """Find a model's files: local paths win, the rest come from `hf_repo` (through the cache)."""

    def find(explicit: str | Path | None, name: str) -> Path:
        if explicit is not None:
            path = Path(explicit)
            if not path.is_file():
                raise CheckpointError(f"{path}: no such file")
            return path
        if hf_repo is None:
            raise CheckpointError(f"no {name} given: pass its path or --hf-repo")
        return _hf_download(hf_repo, name)

    raw: dict[str, Any] = {}
    config_path = Path(config) if config is not None else None
    if config_path is None and hf_repo is not None:
        try:
            config_path = _hf_download(hf_repo, CONFIG_FILE)
        except CheckpointError:
            log.warning("%s has no config.json: assuming the Moshi 7B configuration", hf_repo)
    if config_path is not None:
        try:
            raw = json.loads(config_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{config_path}: not a readable JSON config: {exc}") from exc
        if not isinstance(raw, dict):
            raise CheckpointError(f"{config_path}: expected a JSON object")
    model_type = raw.get("model_type", "moshi")
    if model_type != "moshi":
        raise ConfigError(f"{config_path}: model_type {model_type!r} is not supported (moshi)")
    from .config import moshi_7b

    lm_config = lm_config_from_kyutai(raw) if raw else moshi_7b()
    codec_config = mimi(num_codebooks=max(lm_config.dep_q, lm_config.user_codebooks))
    return ModelFiles(
        lm_weights=find(lm_weights, raw.get("moshi_name", LM_FILE)),
        codec_weights=find(codec_weights, raw.get("mimi_name", CODEC_FILE)),
        tokenizer=find(tokenizer, raw.get("tokenizer_name", TOKENIZER_FILE)),
        lm_config=lm_config,
        codec_config=codec_config,
        sampling=sampling_from_kyutai(raw.get("lm_gen_config", {})),
        model_type=model_type,
    )


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on a GPU (as released), fp32 on a CPU (bf16 matmuls are slow there)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def load_weights(
    module: nn.Module,
    path: str | Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    rename: Callable[[str], str] | None = None,
) -> None:
    """Load a safetensors file into `module` after checking every tensor's name and shape.

    Floating tensors are cast to `dtype` (None: keep the module's). Nothing is loaded unless
    the whole file matches.
    """
    path = Path(path)
    device = torch.device(device)
    expected = module.state_dict()
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            names = {(rename(k) if rename else k): k for k in f.keys()}
            missing = sorted(set(expected) - set(names))
            unexpected = sorted(set(names) - set(expected))
            if missing or unexpected:
                raise CheckpointError(
                    f"{path}: does not match this model: "
                    + (f"missing {len(missing)} tensors (first: {missing[0]}) " if missing else "")
                    + (
                        f"unexpected {len(unexpected)} (first: {unexpected[0]}) "
                        if unexpected
                        else ""
                    )
                    + "- is it the right file for this config?"
                )
            for ours, theirs in names.items():
                found = tuple(f.get_slice(theirs).get_shape())
                want = tuple(expected[ours].shape)
                if found != want:
                    raise CheckpointError(
                        f"{path}: tensor {theirs} has shape {found}, this model expects {want}"
                    )
            state = {}
            for ours, theirs in names.items():
                tensor = f.get_tensor(theirs)
                target_dtype = (
                    dtype
                    if (dtype is not None and tensor.is_floating_point())
                    else expected[ours].dtype
                )
                state[ours] = tensor.to(device=device, dtype=target_dtype)
    except SafetensorError as exc:
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({exc}); re-download it"
        ) from exc
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc})") from exc
    module.load_state_dict(state, strict=True, assign=True)


def load_lm(
    path: str | Path,
    config: LMConfig,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
) -> LM:
    device = torch.device(device)
    dtype = dtype or default_dtype(device)
    with torch.device("meta"):
        lm = LM(config)
    load_weights(lm, path, device, dtype)
    return lm.eval()


def load_codec(
    path: str | Path,
    config: MimiConfig,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
) -> Codec:
    """Load a codec: Kyutai's Mimi file (their tensor names) or one saved by this project."""
    device = torch.device(device)
    dtype = dtype or default_dtype(device)
    with torch.device("meta"):
        codec = Codec(config)
    load_weights(codec, path, device, dtype, rename=codec_key_from_kyutai)
    return codec.eval()


__all__ = [
    "ModelFiles",
    "default_dtype",
    "lm_config_from_kyutai",
    "load_codec",
    "load_lm",
    "load_weights",
    "replace",
    "resolve_files",
    "sampling_from_kyutai",
]
