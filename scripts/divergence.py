"""How far 8-bit weights and 8-bit KV caches take the LM from full precision.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/divergence.py --frames 500

Random weights at Moshi 7B's widths (dim 4096, 32 heads, text vocabulary 32000, audio 2048, the
depth transformer's 1024) with fewer layers (--temporal-layers, --depth-layers), greedy, on
random user codes. Every variant steps in lockstep with the full-precision model:

- forced: after each frame the variant is given the full model's tokens, so both always see the
  same history and only the formats differ. Text logits error (max |a - b|, and that over the
  logits' standard deviation), and how often the greedy text token and the assistant's codes agree.
- free (--free): the variant runs on its own tokens, as in a conversation; the fraction of
  frames whose text token agrees, and the first frame where it differs (errors compound).

At batch 1 on a CPU each step reads every weight (~2 GB in fp32 at the default 1 + 1 layers),
so 500 frames take ~10 minutes of one core.

With --assets DIR (an exported bundle, e.g. app/assets) the trained demo model's LM is used
instead, on the user codes of --user-wav (encoded by the bundle's codec; default: random codes).

Prints one markdown table (docs/performance.md).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import time

import torch

from audio_io.files import read_audio
from model import LM, SamplingParams, moshi_7b
from model.bundle import bundle_files
from model.checkpoint import load_codec, load_lm
from model.kvcache import CacheFormat
from model.quantize import quantize_lm_

VARIANTS: list[tuple[str, bool, CacheFormat]] = [
    ("int8 weights", True, "compute"),
    ("int8 KV cache", False, "int8"),
    ("float8 KV cache", False, "float8"),
    ("int8 weights + int8 KV cache", True, "int8"),
]


@dataclasses.dataclass
class Stats:
    err: list[float] = dataclasses.field(default_factory=list)  # text logits max abs error
    rel: list[float] = dataclasses.field(default_factory=list)  # that / the logits' std
    text: int = 0  # frames whose greedy text token agrees (forced)
    codes: int = 0  # frames whose assistant codes agree (forced)
    free_same: int = 0  # frames whose text token agrees (free)
    first_diff: int | None = None  # first free-running frame that differs


def reduced_7b(temporal_layers: int, depth_layers: int):
    config = moshi_7b()
    return dataclasses.replace(
        config,
        temporal=dataclasses.replace(config.temporal, num_layers=temporal_layers),
        depth=dataclasses.replace(config.depth, num_layers=depth_layers),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=500)
    parser.add_argument("--temporal-layers", type=int, default=1)
    parser.add_argument("--depth-layers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report-every", type=int, default=50, help="print the table so far")
    parser.add_argument(
        "--free", action="store_true", help="also run every variant on its own tokens (2x time)"
    )
    parser.add_argument("--assets", help="an exported bundle: its trained LM, not random weights")
    parser.add_argument("--user-wav", help="(with --assets) the user's audio, through its codec")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    users = None
    if args.assets:
        files = bundle_files(args.assets)
        full = load_lm(files.lm_weights, files.lm_config, "cpu", torch.float32).eval()
        config = full.config
        if args.user_wav:
            codec = load_codec(files.codec_weights, files.codec_config, "cpu")
            pcm = torch.from_numpy(read_audio(args.user_wav, codec.sample_rate)).view(1, 1, -1)
            with torch.no_grad():
                users = codec.encode(pcm)[:, : config.user_codebooks]  # [1, K, frames]
            args.frames = min(args.frames, users.shape[-1])
    else:
        config = reduced_7b(args.temporal_layers, args.depth_layers)
        full = LM(config).eval()
    int8 = copy.deepcopy(full)
    quantize_lm_(int8)
    greedy = SamplingParams.greedy()
    reference = full.init_state(1, greedy)
    runs = []
    for name, int8_weights, fmt in VARIANTS:
        lm = int8 if int8_weights else full
        forced, free = lm.init_state(1, greedy, fmt), lm.init_state(1, greedy, fmt)
        runs.append((name, lm, forced, free, Stats()))

    g = torch.Generator().manual_seed(args.seed + 1)
    start = time.perf_counter()
    for frame in range(args.frames):
        if users is not None:
            user = users[..., frame : frame + 1]
        else:
            user = torch.randint(0, config.card, (1, config.user_codebooks, 1), generator=g)
        want = full.step(user, reference)
        for _, lm, forced, free, stats in runs:
            got = lm.step(user, forced)
            error = (got.text_logits - want.text_logits).abs().max()
            stats.err.append(float(error))
            stats.rel.append(float(error / want.text_logits.std()))
            stats.text += int(torch.equal(got.text_logits.argmax(-1), want.text_logits.argmax(-1)))
            stats.codes += int(torch.equal(got.audio, want.audio))
            forced.tokens.copy_(reference.tokens)
            if not args.free:
                continue
            same = torch.equal(lm.step(user, free).text, want.text)
            stats.free_same += int(same)
            if not same and stats.first_diff is None:
                stats.first_diff = frame
        if (frame + 1) % args.report_every == 0 or frame + 1 == args.frames:
            report(args, runs, frame + 1, time.perf_counter() - start)


def report(args: argparse.Namespace, runs: list, n: int, seconds: float) -> None:
    if args.assets:
        heard = f"the user codes of {args.user_wav}" if args.user_wav else "random user codes"
        print(f"the LM of {args.assets}, greedy, {heard}, {n} frames ({seconds:.0f} s)\n")
    else:
        print(
            f"reduced Moshi 7B: {args.temporal_layers} temporal + {args.depth_layers} depth "
            f"layers, random weights (seed {args.seed}), greedy, {n} frames ({seconds:.0f} s)\n"
        )
    print(
        "| variant | text logits max abs error (forced) | / logits std | text token agrees "
        "(forced) | assistant codes agree (forced) | text agrees (free) | first free difference |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, _, _, _, s in runs:
        first = "none" if s.first_diff is None else f"frame {s.first_diff}"
        free = f"{s.free_same}/{n} | {first}" if args.free else "- | -"
        print(
            f"| {name} | {max(s.err):.4f} (mean {sum(s.err) / n:.4f}) | "
            f"{max(s.rel):.4f} | {s.text}/{n} | {s.codes}/{n} | {free} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
