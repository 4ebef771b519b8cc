"""One set of model options for every command, and loading what they name.

Defaults: the bundled demo model (app/assets/, installed with the package) when it is there;
otherwise a small randomly initialised model, announced as such. Kyutai's released files load
through `--hf-repo` or local paths.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from model import (
    LM,
    Codec,
    ModelFiles,
    SamplingParams,
    TextTokenizer,
    load_codec,
    load_lm,
    resolve_files,
    tiny_lm,
    tiny_mimi,
)
from model.bundle import CONFIG_FILE, bundle_files, bundle_summary
from model.errors import ConfigError
from model.kvcache import CACHE_FORMATS, CacheFormat, check_cache_format
from model.quantize import CODEC_WEIGHTS, codec_weights, quantize_lm_, store_codec_weights_
from model.quantizer import Codebook
from model.transformer import ATTENDING, Attending

from .audio import AudioFormat

log = logging.getLogger(__name__)

# The bundled demo model: package data of `app`, so a wheel carries it as an editable install does.
ASSETS = Path(str(resources.files("app").joinpath("assets")))
# What `talk` says of an export whose folder has no model card with an "In one line"
# (model.bundle.bundle_summary); `train card` writes one.
DEMO_NOTICE = (
    "a demo model trained by antiphon on synthetic English speech (no model card says what "
    "it can do; `antiphon train card` writes one); --hf-repo loads Kyutai's Moshi"
)
UNTRAINED_NOTICE = (
    "no model in app/assets/: this is a small RANDOMLY INITIALISED model, so it answers with "
    "noise and meaningless tokens; --hf-repo loads Kyutai's models"
)
RANDOM_NOTICE = (
    "a small RANDOMLY INITIALISED model, as {source} asks: it answers with noise and "
    "meaningless tokens, for trying the sound path"
)
# The model when none is named, instead of the bundled one: a folder, or RANDOM_MODEL (the test
# suite sets it, so that tests of the pipeline do not run the demo model at its cost).
MODEL_ENV = "ANTIPHON_MODEL"
RANDOM_MODEL = "random"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    codec: Codec
    lm: LM
    tokenizer: TextTokenizer | None  # None for the random stand-in model
    sampling: SamplingParams
    name: str
    device: torch.device
    files: ModelFiles | None = None  # where the weights came from (None: random stand-in)
    notice: str | None = None  # one line a user should read when it starts: what it can do
    cache_format: CacheFormat = "compute"  # the LM's KV cache (model/kvcache.py)
    compiled: bool = False  # the frame compiled by torch.compile (app.core.engine.compiled)
    attending: Attending = "auto"  # how the LM's temporal transformer attends (--attention)

    @property
    def format(self) -> AudioFormat:
        return AudioFormat(self.codec.sample_rate, self.codec.frame_size)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--hf-repo", help="Hugging Face repo, e.g. kyutai/moshiko-pytorch-bf16")
    group.add_argument(
        "--model",
        metavar="DIR",
        help="a model folder written by `antiphon train export`, or `random`: a tiny untrained "
        f"model (noise) to try sound devices and the pipeline with (default: ${MODEL_ENV} if "
        "set, else the bundled demo model)",
    )
    group.add_argument("--moshi-weight", type=Path, help="LM weights (.safetensors)")
    group.add_argument("--mimi-weight", type=Path, help="codec weights (.safetensors)")
    group.add_argument("--tokenizer", type=Path, help="SentencePiece text tokenizer (.model)")
    group.add_argument("--config", type=Path, help="Kyutai-style config.json of the LM")
    group.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if present)"
    )
    group.add_argument(
        "--dtype", choices=sorted(_DTYPES), help="LM dtype (default: bf16 on GPU, fp32 on CPU)"
    )
    add_format_arguments(group)
    group.add_argument(
        "--compile",
        action="store_true",
        help="compile the frame with torch.compile: about 2x faster on a CPU (the demo model, "
        "2 cores); the first time takes minutes, later runs seconds (docs/performance.md)",
    )
    group.add_argument("--text-temperature", type=float)
    group.add_argument("--text-top-k", type=int)
    group.add_argument("--audio-temperature", type=float)
    group.add_argument("--audio-top-k", type=int)
    group.add_argument("--seed", type=int, default=0)


def add_format_arguments(group: argparse._ActionsContainer) -> None:
    """--kv-cache, --int8-weights, --codec-weights and --attention: the weight and cache
    formats and the attention kernel (`with_formats` applies them)."""
    group.add_argument(
        "--kv-cache",
        choices=CACHE_FORMATS,
        default="compute",
        help="LM KV-cache format: the compute dtype (default), or 8 bits with per-head scales "
        "(int8, float8): half of bf16's memory, divergence in docs/performance.md",
    )
    group.add_argument(
        "--int8-weights",
        action="store_true",
        help="weight-only int8 for the LM's linear layers (for GPUs: slower on a CPU)",
    )
    group.add_argument(
        "--codec-weights",
        choices=CODEC_WEIGHTS,
        default="auto",
        help="the codec's large matrices in bfloat16, float16 or float32; auto (default), for a "
        "large codec (the released Mimi) on a CPU: bfloat16 with native bf16 (AVX512-BF16, AMX), "
        "else float16 (x86, fbgemm); float32 elsewhere (docs/performance.md)",
    )
    group.add_argument(
        "--attention",
        choices=ATTENDING,
        default="auto",
        help="how the LM attends to its KV cache: auto (default: explicit softmax on a CPU, SDPA "
        "with a mask elsewhere), explicit, masked, or prefix (FlexAttention over only the "
        "filled part of each conversation's cache, compiled; not yet measured on a GPU)",
    )


def _sampling(args: argparse.Namespace | None, defaults: SamplingParams) -> SamplingParams:
    """The model's own sampling, with what the command line gives over it (absent: kept)."""

    def pick(name: str, default):
        value = getattr(args, name, None)
        return default if value is None else value

    return SamplingParams(
        text_temperature=pick("text_temperature", defaults.text_temperature),
        text_top_k=pick("text_top_k", defaults.text_top_k),
        audio_temperature=pick("audio_temperature", defaults.audio_temperature),
        audio_top_k=pick("audio_top_k", defaults.audio_top_k),
        seed=pick("seed", 0),
    )


def load_from_args(args: argparse.Namespace) -> LoadedModel:
    """The model the options name, in the weight and KV-cache formats they ask for."""
    return with_formats(_load(args), args)


def with_formats(loaded: LoadedModel, args: argparse.Namespace) -> LoadedModel:
    """The model in the formats of --kv-cache, --int8-weights and --codec-weights, compiled
    with --compile."""
    loaded.cache_format = check_cache_format(getattr(args, "kv_cache", "compute"))
    loaded.compiled = getattr(args, "compile", False)
    loaded.attending = getattr(args, "attention", "auto")
    if getattr(args, "int8_weights", False):
        count = quantize_lm_(loaded.lm)
        log.info("int8 weights in %d linear layers of the LM", count)
    choice = getattr(args, "codec_weights", "auto")
    weights = codec_weights(choice, loaded.device, loaded.codec)
    if weights != "float32":
        count = store_codec_weights_(loaded.codec, weights)
        log.info("%s weights in %d layers of the codec", weights, count)
    return loaded


def _load(args: argparse.Namespace) -> LoadedModel:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = _DTYPES[args.dtype] if args.dtype else None
    named = [args.hf_repo, args.moshi_weight, args.mimi_weight, args.tokenizer, args.config]
    chosen, source = getattr(args, "model", None), "--model"
    if chosen is not None and any(named):
        raise ConfigError("--model names a whole model: leave out --hf-repo and the files")
    if not any(named):  # a whole model: --model, else $ANTIPHON_MODEL, else the bundle
        if chosen is None:
            chosen, source = os.environ.get(MODEL_ENV) or None, f"${MODEL_ENV}"
        if chosen == RANDOM_MODEL or (chosen is None and not (ASSETS / CONFIG_FILE).is_file()):
            notice = UNTRAINED_NOTICE  # no model in app/assets/ (a checkout without it)
            if chosen == RANDOM_MODEL:
                notice = RANDOM_NOTICE.format(source=f"{source} {RANDOM_MODEL}")
            return random_model(device, _sampling(args, SamplingParams()), args.seed, notice)
        if chosen is None:
            return bundled_model(device, args, dtype)
        folder = Path(chosen)
        if not (folder / CONFIG_FILE).is_file():
            raise ConfigError(
                f"{source} {folder}: not a model folder (no {CONFIG_FILE}; `antiphon train "
                f"export --out DIR` writes one), nor `{RANDOM_MODEL}`"
            )
        notice = f"the model exported in {folder} ({source})"
        if summary := bundle_summary(folder):
            notice += f": {summary}"
        return bundled_model(device, args, dtype, folder=folder, name=str(folder), notice=notice)
    if args.hf_repo is None and not (args.moshi_weight and args.mimi_weight and args.tokenizer):
        raise ConfigError(
            "without --hf-repo, pass all of --moshi-weight, --mimi-weight and "
            "--tokenizer (and --config unless it is the Moshi 7B)"
        )
    files = resolve_files(
        args.hf_repo, args.moshi_weight, args.mimi_weight, args.tokenizer, args.config
    )
    log.info("loading %s on %s", files.lm_weights, device)
    return LoadedModel(
        codec=load_codec(files.codec_weights, files.codec_config, device),
        lm=load_lm(files.lm_weights, files.lm_config, device, dtype),
        tokenizer=TextTokenizer(files.tokenizer),
        sampling=_sampling(args, files.sampling),
        name=args.hf_repo or files.lm_weights.name,
        device=device,
        files=files,
    )


def bundled_model(
    device: torch.device,
    args: argparse.Namespace | None = None,
    dtype: torch.dtype | None = None,
    *,
    folder: Path = ASSETS,
    name: str = "bundled demo model",
    notice: str | None = None,
) -> LoadedModel:
    """A bundle (`model.bundle`): the demo model shipped in app/assets/ (docs/demo-model.md),
    or another export of it in `folder`. Sampling is the bundle's, with the model options of
    `args` (--text-temperature, ..., --seed) over it where they are given. The notice `talk`
    shows: `notice`, else the model card's one line, else DEMO_NOTICE."""
    files = bundle_files(folder)
    notice = notice or bundle_summary(folder) or DEMO_NOTICE
    return LoadedModel(
        codec=load_codec(files.codec_weights, files.codec_config, device),
        lm=load_lm(files.lm_weights, files.lm_config, device, dtype),
        tokenizer=TextTokenizer(files.tokenizer),
        sampling=_sampling(args, files.sampling),
        name=name,
        device=device,
        files=files,
        notice=notice,
    )


def random_model(
    device: torch.device, sampling: SamplingParams, seed: int = 0, notice: str = UNTRAINED_NOTICE
) -> LoadedModel:
    """`--model random`: tiny shapes, random weights, for the sound path and the tests; also
    the stand-in where app/assets/ has no model (a checkout without it)."""
    torch.manual_seed(seed & 0xFFFFFFFF)  # any integer the user gives is a seed
    codec = Codec(tiny_mimi()).to(device).eval()
    for module in codec.quantizer.modules():
        if isinstance(module, Codebook):  # an untrained codebook is all zeros: give it spread
            module.embedding_sum.normal_()
            module.refresh()
    lm = LM(tiny_lm()).to(device).eval()
    return LoadedModel(
        codec, lm, None, sampling, "random tiny model (untrained)", device, notice=notice
    )
