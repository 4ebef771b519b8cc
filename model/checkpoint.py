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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from .codec import Codec
from .config import LMConfig, MimiConfig, mimi, moshi_7b
from .errors import CheckpointError, ConfigError
from .kyutai_config import lm_config_from_kyutai, sampling_from_kyutai
from .kyutai_names import codec_key_from_kyutai
from .lm import LM
from .sampling import SamplingParams

log = logging.getLogger(__name__)

LM_FILE = "model.safetensors"
CODEC_FILE = "tokenizer-e351c8d8-checkpoint125.safetensors"
TOKENIZER_FILE = "tokenizer_spm_32k_3.model"
CONFIG_FILE = "config.json"


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


def _hf_cache_dir() -> str | None:
    """The hub cache the environment names now. huggingface_hub reads these variables once, at
    import; reading them at call time lets a caller (or a test) set them later."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return os.path.expanduser(os.environ[var])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    return None  # huggingface_hub's default (~/.cache/huggingface/hub)


def _hf_offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in ("1", "ON", "YES", "TRUE")  # huggingface_hub's truthy values


class _NotInRepo(CheckpointError):
    """The repo, as the hub or the cache has it, lacks this file (config.json may be absent)."""


def _hf_download(
    repo: str,
    filename: str,
    cache_dir: str | Path | None,
    offline: bool,
    unreachable: str | None = None,
) -> Path:
    """`filename` of `repo` through the cache; `unreachable`: why the hub cannot be reached
    (then only the cache is tried, as offline, rather than retrying for a minute)."""
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
    except ImportError as exc:
        raise CheckpointError(
            f"--hf-repo {repo} needs huggingface_hub (pip install 'antiphon[hf]'), "
            "or pass local files with --moshi-weight, --mimi-weight, --tokenizer and --config"
        ) from exc
    local_only = offline or unreachable is not None
    try:
        return Path(
            hf_hub_download(repo, filename, cache_dir=cache_dir, local_files_only=local_only)
        )
    except LocalEntryNotFoundError as exc:
        where = f"the Hugging Face cache ({cache_dir or 'default'})"
        if unreachable is not None:
            what = repo if not _repo_cached(repo, cache_dir) else f"{repo}/{filename}"
            raise CheckpointError(
                f"cannot reach the Hugging Face hub {unreachable}, and {what} is not in {where}; "
                "check the network (and HF_ENDPOINT), or set HF_HUB_OFFLINE=1 to use only the "
                "cache without asking the hub"
            ) from exc
        hint = (
            "offline mode is on (HF_HUB_OFFLINE): download it once while online"
            if offline
            else "check the network or download it into the cache first"
        )
        if not _repo_cached(repo, cache_dir):  # no file of it at all: not a file it lacks
            raise CheckpointError(f"{repo} is not in {where}; {hint}") from exc
        raise _NotInRepo(f"{repo}/{filename} is not in {where}; {hint}") from exc
    except EntryNotFoundError as exc:  # the hub answered: the repo has no such file
        raise _NotInRepo(f"{repo} has no {filename}: {exc}") from exc
    except Exception as exc:  # the hub raises many kinds; all mean "could not get the file"
        raise CheckpointError(f"could not get {filename} from {repo}: {exc}") from exc


def _repo_cached(repo: str, cache_dir: str | Path | None) -> bool:
    """Whether the cache holds any snapshot of `repo` (huggingface_hub's cache layout)."""
    from huggingface_hub import constants

    root = Path(cache_dir if cache_dir is not None else constants.HF_HUB_CACHE)
    snapshots = root / f"models--{repo.replace('/', '--')}" / "snapshots"
    return snapshots.is_dir() and any(snapshots.iterdir())


def _hub_unreachable(repo: str, filename: str) -> str | None:
    """One quick question to the hub (no retries): None when it answers, whatever it says
    (the download then reports it), else where it is and why it cannot be reached. Without
    this, huggingface_hub retries a file that is not cached for about 25 s, with a warning a
    second, before it gives up."""
    try:
        from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
        from huggingface_hub.errors import HfHubHTTPError
    except ImportError:
        return None  # _hf_download says how to install it
    try:
        get_hf_file_metadata(hf_hub_url(repo, filename), timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status is not None and (status >= 500 or status == 408):
            return f"at {constants.ENDPOINT} (HTTP {status})"
        return None
    except Exception as exc:  # no answer: refused, timed out, no route, no DNS, bad TLS
        return f"at {constants.ENDPOINT} ({exc or type(exc).__name__})"
    return None


def resolve_files(
    hf_repo: str | None = None,
    lm_weights: str | Path | None = None,
    codec_weights: str | Path | None = None,
    tokenizer: str | Path | None = None,
    config: str | Path | None = None,
    cache_dir: str | Path | None = None,
    offline: bool | None = None,
) -> ModelFiles:
    """Find a model's files: local paths win, the rest come from `hf_repo` (through the cache).

    `cache_dir` and `offline` default to the environment at call time (HF_HUB_CACHE or HF_HOME,
    HF_HUB_OFFLINE), as huggingface_hub documents them.
    """
    cache_dir = cache_dir if cache_dir is not None else _hf_cache_dir()
    offline = offline if offline is not None else _hf_offline()

    def find(explicit: str | Path | None, name: str) -> Path:
        if explicit is not None:
            path = Path(explicit)
            if not path.is_file():
                raise CheckpointError(f"{path}: no such file")
            return path
        if hf_repo is None:
            raise CheckpointError(f"no {name} given: pass its path or --hf-repo")
        return _hf_download(hf_repo, name, cache_dir, offline, unreachable)

    unreachable = None
    needed = [lm_weights, codec_weights, tokenizer, config]
    if hf_repo is not None and not offline and any(path is None for path in needed):
        unreachable = _hub_unreachable(hf_repo, CONFIG_FILE if config is None else LM_FILE)

    raw: dict[str, Any] = {}
    config_path = Path(config) if config is not None else None
    if config_path is None and hf_repo is not None:
        try:
            config_path = _hf_download(hf_repo, CONFIG_FILE, cache_dir, offline, unreachable)
        except _NotInRepo:
            log.warning("%s has no config.json: assuming the Moshi 7B configuration", hf_repo)
    if config_path is not None:
        try:
            raw = json.loads(config_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{config_path}: not a readable JSON config: {exc}") from exc
        if not isinstance(raw, dict):
            raise CheckpointError(f"{config_path}: expected a JSON object")
    model_type = raw.get("model_type", "moshi")
    if model_type != "moshi":
        raise ConfigError(f"{config_path}: model_type {model_type!r} is not supported (moshi)")
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
    """The LM's dtype: bf16 on a GPU (as released), fp32 on a CPU (bf16 matmuls are slow there).

    The codec always defaults to fp32, as Kyutai runs it: it is small, and its codebook
    distances and convolutions are sensitive to rounding."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def _some(names: list[str], limit: int = 5) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def load_weights(
    module: nn.Module,
    path: str | Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    rename: Callable[[str], str] | None = None,
) -> None:
    """Load a safetensors file into `module` after checking every tensor's name and shape.

    Floating tensors are cast to `dtype` (None: keep the module's); `rename` maps the file's
    names to the module's. Nothing is loaded unless the whole file matches, and nothing is
    unpickled: a file that is not safetensors is refused.
    """
    path = Path(path)
    device = torch.device(device)
    expected = module.state_dict()
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            names: dict[str, str] = {}  # ours -> the file's
            for theirs in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                ours = rename(theirs) if rename else theirs
                if ours in names:
                    raise CheckpointError(
                        f"{path}: tensors {names[ours]} and {theirs} both load into {ours}"
                    )
                names[ours] = theirs
            missing = sorted(set(expected) - set(names))
            unexpected = sorted(names[k] for k in set(names) - set(expected))
            if missing or unexpected:
                raise CheckpointError(
                    f"{path}: does not match this model (is it the right file for this config?)"
                    + (f"; missing {len(missing)} tensors: {_some(missing)}" if missing else "")
                    + (
                        f"; {len(unexpected)} unexpected tensors: {_some(unexpected)}"
                        if unexpected
                        else ""
                    )
                )
            wrong = []
            for ours, theirs in names.items():
                found = tuple(f.get_slice(theirs).get_shape())
                want = tuple(expected[ours].shape)
                if found != want:
                    wrong.append(f"tensor {theirs} has shape {found}, this model expects {want}")
            if wrong:
                raise CheckpointError(
                    f"{path}: {len(wrong)} tensors do not have the shapes of this config "
                    f"(is it the right file for this config?): {_some(wrong, 3)}"
                )
            state = {}
            for ours, theirs in names.items():
                want_dtype = expected[ours].dtype
                if dtype is not None and want_dtype.is_floating_point:
                    want_dtype = dtype
                state[ours] = f.get_tensor(theirs).to(device=device, dtype=want_dtype)
    except SafetensorError as exc:
        raise CheckpointError(
            f"{path}: not a safetensors file, or a damaged one ({exc}); re-download it. "
            "Only safetensors are read: pickled checkpoints (.pt, .bin) are never loaded"
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
    """Load the LM in `dtype` (None: `default_dtype(device)`), without first allocating it."""
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
    dtype: torch.dtype = torch.float32,
) -> Codec:
    """Load a codec: Kyutai's Mimi file (their tensor names) or one saved by this project.

    fp32 on every device unless `dtype` says otherwise (see `default_dtype`)."""
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
    "resolve_files",
    "sampling_from_kyutai",
]
