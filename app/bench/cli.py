"""`antiphon bench`: time one streaming frame, ours and the reference `moshi` package's.

One frame is what the runtime does every 80 ms: encode 1920 samples of the user, one LM step
(sampling included), decode the assistant's codes. Both implementations run in this process, with
the same configs, random weights (identical where both have them), dtype, device and batch size.
Per batch size it prints the median and p99 of each part and of the whole frame, and the ratio
reference / ours (above 1: ours is faster).

Frames before the LM's delays have passed are never timed (the reference decodes nothing then).
On CUDA each timed part is bracketed by `torch.cuda.synchronize()`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from tqdm import tqdm

from app.core.engine import compiled
from model.codec import Codec, DecoderState, EncoderState
from model.config import (
    LMConfig,
    MimiConfig,
    demo_lm,
    demo_mimi,
    mimi,
    moshi_7b,
    tiny_lm,
    tiny_mimi,
)
from model.errors import ConfigError
from model.kvcache import CACHE_FORMATS, CacheFormat
from model.lm import LM, LMState
from model.quantize import CODEC_WEIGHTS, quantize_lm_, store_codec_weights_
from model.quantize import codec_weights as codec_weights_for
from model.quantizer import Codebook
from model.sampling import SamplingParams
from model.transformer import ATTENDING, Attending

from .stream import Implementation, Stream

if TYPE_CHECKING:
    from .reference import Reference

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
PARTS = ("encode", "lm", "decode", "frame")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lm",
        choices=("tiny", "demo", "7b", "none"),
        default="tiny",
        help="LM config (none: time the codec only)",
    )
    parser.add_argument(
        "--codec", choices=("tiny", "demo", "mimi"), default="tiny", help="codec config"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default="float32")
    parser.add_argument(
        "--batch",
        type=int,
        nargs="+",
        default=[1],
        metavar="B",
        help="batch sizes, each timed on its own (default: 1)",
    )
    parser.add_argument("--frames", type=int, default=60, help="timed frames (default: 60)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed frames first (default: 10)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--order",
        choices=("auto", "interleaved", "sequential"),
        default="auto",
        help="interleaved: alternate ours and the reference frame by frame (fair on a busy "
        "machine); sequential: one after the other (one KV cache in memory at a time); "
        "auto: interleaved on CPU, sequential on CUDA",
    )
    parser.add_argument(
        "--kv-cache",
        choices=CACHE_FORMATS,
        default="compute",
        help="our LM's KV-cache format (the reference keeps its own)",
    )
    parser.add_argument(
        "--int8-weights", action="store_true", help="weight-only int8 for our LM's linear layers"
    )
    parser.add_argument(
        "--attention",
        choices=ATTENDING,
        default="auto",
        help="how our LM attends to its KV cache (auto: explicit on a CPU, masked SDPA "
        "elsewhere; prefix: FlexAttention over each conversation's filled cache, compiled)",
    )
    parser.add_argument(
        "--codec-weights",
        choices=CODEC_WEIGHTS,
        default="auto",
        help="our codec's large matrices in bfloat16, float16 or float32 (the reference keeps "
        "float32); auto (default): as the product loads it (for the released Mimi on a CPU: "
        "bfloat16 with native bf16, else float16 on x86)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="our three steps compiled by torch.compile (inductor), each one graph; the "
        "warm-up frames compile them (minutes the first time)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results here")
    parser.add_argument(
        "--no-reference", action="store_true", help="time ours only (no `moshi` package needed)"
    )


# --- building the models ---------------------------------------------------------------------


def configs(lm_name: str, codec_name: str) -> tuple[MimiConfig, LMConfig | None]:
    codec_config = {"mimi": mimi, "demo": demo_mimi}.get(codec_name, tiny_mimi)()
    if lm_name == "none":
        return codec_config, None
    if lm_name == "7b":
        if codec_name != "mimi":
            raise ConfigError("--lm 7b reads and writes Mimi's codes: use it with --codec mimi")
        return codec_config, moshi_7b()
    if lm_name == "demo":  # the bundled demo model's shapes (its tokenizer has under 1024 pieces)
        if codec_name != "demo":
            raise ConfigError("--lm demo reads and writes the demo codec's codes: add --codec demo")
        return codec_config, demo_lm(text_card=1024)
    # A tiny LM that speaks the codec's tokens: as many codebooks each way as the codec makes.
    K = codec_config.num_codebooks
    return codec_config, tiny_lm(dep_q=K, n_q=2 * K, card=codec_config.codebook_size)


def _random_init_(module: nn.Module, generator: torch.Generator) -> None:
    """Fill freshly allocated weights: small normal matrices and embeddings, unit norms."""
    for param in module.parameters():
        if param.dim() >= 2:
            noise = torch.randn(param.shape, generator=generator, device=param.device)
            param.copy_(0.02 * noise)
        else:
            param.fill_(1.0)


class Ours:
    def __init__(
        self,
        codec_config: MimiConfig,
        lm_config: LMConfig | None,
        device: torch.device,
        dtype: torch.dtype,
        sampling: SamplingParams,
        reference: Reference | None = None,
        cache_format: CacheFormat = "compute",
        int8_weights: bool = False,
        codec_weights: str = "float32",
        compile_steps: bool = False,
        attending: Attending = "auto",
    ) -> None:
        self.sampling = sampling
        self.attending = attending
        self.steps = (_encode, _lm, _decode)
        if compile_steps:
            self.steps = (compiled(_encode), compiled(_lm), compiled(_decode))
        self.cache_format = cache_format
        codec = Codec(codec_config).eval()
        if reference is not None:
            codec.load_state_dict(reference.our_codec_state, strict=True)
        else:
            for module in codec.modules():
                if isinstance(module, Codebook):
                    module.embedding_sum.normal_()
                    module.cluster_usage.uniform_(0.5, 2.0)
                    module.refresh()
        self.codec = codec.to(device, dtype)
        self.codec_weights = codec_weights_for(codec_weights, device, self.codec)
        store_codec_weights_(self.codec, self.codec_weights)
        self.lm: LM | None = None
        if lm_config is not None:
            # On a GPU, allocated there directly: a random 7B on the CPU takes minutes.
            with torch.device("meta" if device.type == "cuda" else "cpu"):
                lm = LM(lm_config).to(dtype).eval()
            if reference is not None:  # the reference's very tensors: one copy of the weights
                lm.load_state_dict(reference.our_lm_state(), strict=True, assign=True)
            elif device.type == "cuda":
                lm.to_empty(device=device)
                _random_init_(lm, torch.Generator(device).manual_seed(0))
            if int8_weights:
                quantize_lm_(lm)
            self.lm = lm

    @contextlib.contextmanager
    def stream(self, batch_size: int) -> Iterator[Stream]:
        codec, lm = self.codec, self.lm
        enc, dec = codec.init_encoder_state(batch_size), codec.init_decoder_state(batch_size)
        encode, lm_step, decode = self.steps
        step = None
        if lm is not None:
            state = lm.init_state(
                batch_size, self.sampling, self.cache_format, attending=self.attending
            )

            def step(codes: torch.Tensor) -> torch.Tensor | None:
                return lm_step(lm, codes, state)

        yield Stream(
            encode=lambda pcm: encode(codec, pcm, enc),
            lm=step,
            decode=lambda codes: decode(codec, codes, dec),
        )


def _encode(codec: Codec, pcm: torch.Tensor, state: EncoderState) -> torch.Tensor:
    return codec.encode_step(pcm, state)


def _lm(lm: LM, codes: torch.Tensor, state: LMState) -> torch.Tensor:
    return lm.step(codes, state).audio  # NOT_READY (-1) until delays pass


def _decode(codec: Codec, codes: torch.Tensor, state: DecoderState) -> torch.Tensor:
    return codec.decode_step(codes, state)


# --- timing -----------------------------------------------------------------------------------


def _clock(device: torch.device) -> Callable[[], float]:
    if device.type == "cuda":

        def synced() -> float:
            torch.cuda.synchronize(device)
            return time.perf_counter()

        return synced
    return time.perf_counter


def speech_like(config: MimiConfig, batch_size: int, frames: int, seed: int) -> torch.Tensor:
    """A test signal [B, 1, frames * frame_size]: a modulated tone plus noise."""
    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(frames * config.frame_size) / config.sample_rate
    tone = torch.sin(2 * torch.pi * 180 * t) * torch.sin(2 * torch.pi * 3 * t)
    return 0.3 * tone + 0.05 * torch.randn(batch_size, 1, t.numel(), generator=generator)


def step_frame(stream: Stream, frame: torch.Tensor, clock: Callable[[], float]) -> list[float]:
    """One frame through one implementation: ms of encode, LM, decode and the whole frame."""
    start = clock()
    codes = stream.encode(frame)
    encoded = clock()
    reply = codes if stream.lm is None else stream.lm(codes)  # codec only: loop back
    stepped = clock()
    if reply is not None:  # the reference's LM gives nothing before its delays have passed
        stream.decode(reply)
    end = clock()
    seconds = (encoded - start, stepped - encoded, end - stepped, end - start)
    return [1000.0 * s for s in seconds] if reply is not None else []


def time_frames(
    streams: dict[str, Stream],
    frames: list[torch.Tensor],
    warmup: int,
    label: str,
    device: torch.device,
) -> dict[str, dict[str, list[float]]]:
    """Step every frame through every stream, alternating which goes first, so that a burst of
    load from elsewhere on the machine falls on both alike. Times of the frames after `warmup`."""
    clock = _clock(device)
    times: dict[str, dict[str, list[float]]] = {
        name: {part: [] for part in PARTS} for name in streams
    }
    names = list(streams)
    for index, frame in enumerate(tqdm(frames, desc=label, leave=False, disable=None)):
        for name in names if index % 2 == 0 else reversed(names):
            ms = step_frame(streams[name], frame, clock)
            if index >= warmup:
                assert ms, "a timed frame came before the LM's delays had passed"
                for part, value in zip(PARTS, ms, strict=True):
                    times[name][part].append(value)
    return times


def summary(samples: list[float]) -> dict[str, float]:
    values = torch.tensor(samples, dtype=torch.float64)
    return {"median_ms": values.quantile(0.5).item(), "p99_ms": values.quantile(0.99).item()}


# --- the command ------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    device = torch.device(args.device)
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {args.device}: the benchmark runs on cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is visible to this torch build")
    if args.frames < 1 or args.warmup < 0 or min(args.batch) < 1:
        raise ConfigError("--frames and --batch must be at least 1, --warmup at least 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = _DTYPES[args.dtype]
    codec_config, lm_config = configs(args.lm, args.codec)
    warmup = args.warmup
    if args.compile and warmup < 1:
        warmup = 1
        log.warning("--warmup raised to 1: the first frame compiles (--compile) and is not timed")
    if lm_config is not None and warmup <= lm_config.max_delay:
        warmup = lm_config.max_delay + 1
        log.warning("--warmup raised to %d: frames before the LM's delays are not timed", warmup)
    sampling = SamplingParams(seed=args.seed)
    if dtype != torch.float32 and args.codec_weights in ("bfloat16", "float16"):
        raise ConfigError(
            f"--codec-weights {args.codec_weights} stores a float32 codec's matrices in a "
            f"smaller format; with --dtype {args.dtype} the whole codec is already in {args.dtype}"
        )
    interleaved = args.order == "interleaved" or (args.order == "auto" and device.type == "cpu")

    torch.manual_seed(args.seed)
    with torch.no_grad():
        reference: Reference | None = None
        if not args.no_reference:
            reference = _build_reference(codec_config, lm_config, device, dtype, sampling)
        ours = Ours(
            codec_config,
            lm_config,
            device,
            dtype,
            sampling,
            reference,
            cache_format=args.kv_cache,
            int8_weights=args.int8_weights,
            codec_weights=args.codec_weights if dtype == torch.float32 else "float32",
            compile_steps=args.compile,
            attending=args.attention,
        )
        header = _header(args, device, ours, codec_config, lm_config) | {
            "codec_weights": args.dtype if dtype != torch.float32 else ours.codec_weights,
            "warmup": warmup,
            "order": "interleaved frame by frame" if interleaved else "one after the other",
        }
        print(_format_header(header), flush=True)
        sides: dict[str, Implementation] = {"ours": ours}
        if reference is not None:
            sides["reference"] = reference
        results = []
        for batch_size in args.batch:
            pcm = speech_like(codec_config, batch_size, warmup + args.frames, args.seed)
            frames = list(pcm.to(device, dtype).split(codec_config.frame_size, dim=2))
            row: dict[str, Any] = {"batch": batch_size}
            # Interleaved: both streaming states live at once. Sequential: one at a time (the
            # 7B at large batch sizes on one GPU has room for only one side's KV cache).
            groups = [sides] if interleaved else [{name: side} for name, side in sides.items()]
            for group in groups:
                with contextlib.ExitStack() as stack:
                    streams = {
                        name: stack.enter_context(side.stream(batch_size))
                        for name, side in group.items()
                    }
                    label = f"{' + '.join(group)}, batch {batch_size}"
                    times = time_frames(streams, frames, warmup, label, device)
                for name, parts in times.items():
                    row[name] = {
                        part: summary(parts[part]) | {"samples_ms": parts[part]} for part in PARTS
                    }
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            if reference is not None:
                row["ratio"] = {
                    part: row["reference"][part]["median_ms"] / row["ours"][part]["median_ms"]
                    for part in PARTS
                }
            results.append(row)
            print(_format_table(row, lm_config is not None, args.frames, warmup), flush=True)
    if args.json:
        args.json.write_text(json.dumps(header | {"results": results}, indent=2) + "\n")
        print(f"results written to {args.json}")
    return 0


def _build_reference(
    codec_config: MimiConfig,
    lm_config: LMConfig | None,
    device: torch.device,
    dtype: torch.dtype,
    sampling: SamplingParams,
) -> Reference:
    if device.type == "cpu":  # the reference's lazy torch.compile is for its CUDA path
        os.environ.setdefault("NO_TORCH_COMPILE", "1")
    try:
        from .reference import Reference
    except ImportError as exc:
        raise ConfigError(
            "the comparison needs the reference `moshi` package (bash scripts/setup.sh --dev); "
            "or pass --no-reference"
        ) from exc
    return Reference(codec_config, lm_config, device, dtype, sampling)


def _parameters(module: nn.Module | None) -> int:
    """Parameters, counting the weights that a smaller format keeps as buffers (int8, bf16,
    fp16)."""
    if module is None:
        return 0
    stored = sum(b.numel() for name, b in module.named_buffers() if name.endswith(".weight"))
    return sum(p.numel() for p in module.parameters()) + stored


def _header(
    args: argparse.Namespace,
    device: torch.device,
    ours: Ours,
    codec_config: MimiConfig,
    lm_config: LMConfig | None,
) -> dict[str, Any]:
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    return {
        "device": f"{device} ({device_name})",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "dtype": args.dtype,
        "codec": args.codec,
        "lm": args.lm,
        "kv_cache": args.kv_cache,
        "attention": args.attention,
        "int8_weights": args.int8_weights,
        "codec_weights_option": args.codec_weights,
        "compiled": args.compile,
        "codec_parameters": _parameters(ours.codec),
        "lm_parameters": _parameters(ours.lm),
        "codec_config": asdict(codec_config),
        "lm_config": None if lm_config is None else asdict(lm_config),
        "sampling": asdict(ours.sampling),
        "frames": args.frames,
        "reference": None if args.no_reference else f"moshi {version('moshi')}",
        "no_torch_compile": os.environ.get("NO_TORCH_COMPILE", ""),
    }


def _format_header(header: dict[str, Any]) -> str:
    lm = header["lm"]
    if lm != "none":
        lm += f" ({header['lm_parameters']:,} params)"
    return "\n".join(
        [
            f"device   {header['device']}",
            f"torch    {header['torch']}, {header['threads']} threads, {header['dtype']}",
            f"codec    {header['codec']} ({header['codec_parameters']:,} params), ours with "
            f"{header['codec_weights']} weights (--codec-weights {header['codec_weights_option']})",
            f"lm       {lm}",
            f"ours     {'compiled (--compile)' if header.get('compiled') else 'eager'}",
            f"compare  ours and {header['reference'] or 'nothing (--no-reference)'}, "
            f"{header['order']}",
        ]
    )


def _format_table(row: dict[str, Any], has_lm: bool, frames: int, warmup: int) -> str:
    sides = [name for name in ("ours", "reference") if name in row]
    lines = [
        f"\nbatch {row['batch']}: ms, median (p99) of {frames} frames after {warmup} warm-up",
        f"{'':8}"
        + "".join(f"{name:>18}" for name in sides)
        + (f"{'ref/ours':>10}" if "ratio" in row else ""),
    ]
    for part in PARTS:
        if part == "lm" and not has_lm:
            continue
        line = f"{part:8}"
        for name in sides:
            cell = f"{row[name][part]['median_ms']:.2f} ({row[name][part]['p99_ms']:.2f})"
            line += f"{cell:>18}"
        if "ratio" in row:
            line += f"{row['ratio'][part]:10.2f}"
        lines.append(line)
    return "\n".join(lines)
