"""`antiphon train lm`: the Moshi-architecture LM on the codec's tokens and the aligned text.

Data: every training dialogue becomes streams [1 + 2K, frames] at 12.5 Hz: the inner
monologue (`app.train.dialogues.text_tokens`), the assistant's K codes, the user's K codes (both
channels encoded by the trained codec). They are encoded once and cached in the run folder
(`tokens.npz`, keyed by the codec's and tokenizer's bytes). Training windows are `--frames` long
(at most the LM's context), from the start of a dialogue half of the time, as a conversation
starts at inference.

Loss, as Moshi's: cross-entropy of the text stream (PAD frames weighted by `--pad-weight`) +
cross-entropy of the assistant's codebooks, the first (semantic) one weighted more
(`--first-codebook-weight`). Positions with no target (padding, the ends the delays push out)
are ignored.

A run folder ends with `lm.safetensors` and `config.json` (Kyutai's keyword form).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from model.bundle import save_safetensors
from model.codec import Codec
from model.config import LMConfig, demo_lm, tiny_lm
from model.errors import ConfigError
from model.kyutai_config import lm_config_to_kyutai
from model.lm import LM
from model.tokenizer import TextTokenizer

from . import loop
from .codec import load_trained_codec
from .dialogues import read_dialogue, read_manifest, text_tokens
from .tokenizer import TOKENIZER_FILE

log = logging.getLogger(__name__)

WEIGHTS, CONFIG, TOKENS = "lm.safetensors", "config.json", "tokens.npz"
EVAL_TOKENS = "tokens-eval.npz"
HELD_OUT_DIALOGUES = 48  # teacher-forced figures on this many held-out dialogues
IGNORE = -1  # target id of positions without a target (also "no input" for the embeddings)


def tiny_demo_lm(text_card: int, card: int, codebooks: int) -> LMConfig:
    return tiny_lm(dep_q=codebooks, n_q=2 * codebooks, text_card=text_card, card=card)


PRESETS = {"demo": demo_lm, "tiny": tiny_demo_lm}


# --- the loss -----------------------------------------------------------------------------------


def lm_loss(
    lm: LM,
    codes: torch.Tensor,
    pad_weight: float = 0.5,
    first_codebook_weight: float = 10.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Moshi's training loss on codes [B, streams, T] (IGNORE where there is no token).

    Computed against the delayed targets (`LM.forward_delayed`): every (logit, target) pair is
    the one the aligned loss would use, without copying the logits back into aligned time."""
    config = lm.config
    text_logits, audio_logits, targets = lm.forward_delayed(codes)
    text_target = targets[:, 0].flatten()
    text_ce = F.cross_entropy(
        text_logits.flatten(0, 1).float(), text_target, ignore_index=IGNORE, reduction="none"
    )
    weight = torch.where(text_target == config.text_padding_id, pad_weight, 1.0)
    weight = weight * (text_target != IGNORE)
    text_loss = (text_ce * weight).sum() / weight.sum().clamp(min=1)

    audio_target = targets[:, 1 : config.dep_q + 1]  # [B, dep_q, T]
    per_codebook = [
        F.cross_entropy(
            audio_logits[:, k].flatten(0, 1).float(),
            audio_target[:, k].flatten(),
            ignore_index=IGNORE,
        )
        for k in range(config.dep_q)
    ]
    weights = torch.tensor([first_codebook_weight] + [1.0] * (config.dep_q - 1))
    audio_loss = (torch.stack(per_codebook) * weights.to(text_loss)).sum() / weights.sum()
    with torch.no_grad():
        spoken = (text_target != IGNORE) & (text_target != config.text_padding_id)
        hits = (text_logits.flatten(0, 1).argmax(-1) == text_target) & spoken
        text_accuracy = hits.sum() / spoken.sum().clamp(min=1)
    metrics = {
        "text": text_loss.item(),
        "audio": audio_loss.item(),
        "sem": per_codebook[0].item(),
        "text_acc": text_accuracy.item(),
    }
    return text_loss + audio_loss, metrics


# --- data ----------------------------------------------------------------------------------------


def _fingerprint(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()


@torch.no_grad()
def encode_dialogues(
    folder: str | Path,
    codec: Codec,
    tokenizer: TextTokenizer,
    num_codebooks: int,
    device: torch.device,
    batch: int = 8,
    progress: bool = True,
    bf16: bool = False,
) -> list[np.ndarray]:
    """Each dialogue as int16 [1 + 2 * num_codebooks, frames]: text, assistant, user; the
    user's streams one frame ahead (column t holds the user's frame t + 1, -1 at the end), so
    that teacher forcing conditions on what `LM.step` hears (`model.lm.user_ahead`).

    With `bf16`, the codec's convolutions run under bf16 autocast (2.4x faster on this CPU;
    the quantizer stays fp32): `train lm` measures and logs how many codes differ from fp32."""
    codec = codec.to(device).eval()
    autocast = loop.autocast(device, enabled=bf16)
    frame_rate, frame_size = codec.config.frame_rate, codec.frame_size
    files = read_manifest(folder)
    out: list[np.ndarray] = []
    every = max(batch, len(files) // 20 // batch * batch)  # without a bar: a log line per 5%
    for first in tqdm(range(0, len(files), batch), desc="encoding", disable=not progress):
        if not progress and first % every == 0:
            log.info("encoding %s: %d/%d dialogues", folder, first, len(files))
        loaded = [read_dialogue(path) for path in files[first : first + batch]]
        frames = [math.ceil(pcm.shape[1] / frame_size) for pcm, _ in loaded]
        stereo = np.zeros((len(loaded), 2, max(frames) * frame_size), dtype=np.float32)
        for i, (pcm, _) in enumerate(loaded):
            stereo[i, :, : pcm.shape[1]] = pcm
        pcm_batch = torch.from_numpy(stereo).to(device).view(-1, 1, stereo.shape[-1])
        # [2B, K, frames]; the codec is causal, so the zero padding changes no earlier frame
        with autocast:
            latent = codec.latent(pcm_batch)
        encoded = codec.quantizer.encode(latent, num_codebooks)
        codes = encoded.reshape(len(loaded), 2 * num_codebooks, -1).cpu().numpy()
        for i, ((_, description), n) in enumerate(zip(loaded, frames, strict=True)):
            text = text_tokens(description["alignments"], tokenizer.encode, n, frame_rate)
            assistant, user = codes[i, :num_codebooks, :n], codes[i, num_codebooks:, :n]
            # the user one frame ahead, as `LM.step` hears it (model.lm.user_ahead)
            user = np.concatenate([user[:, 1:], np.full_like(user[:, :1], IGNORE)], axis=1)
            out.append(np.concatenate([np.array(text)[None], assistant, user]).astype(np.int16))
    return out


def load_or_encode(
    data: Path,
    codec_dir: Path,
    tokenizer: TextTokenizer,
    num_codebooks: int,
    device: torch.device,
    cache: Path,
    progress: bool = True,
    bf16: bool = False,
) -> list[np.ndarray]:
    """The token streams of a dialogue folder, cached in `cache`; encoded now if missing or
    stale (another codec, tokenizer, set of dialogues or precision)."""
    fingerprint = _fingerprint(
        codec_dir / "codec.safetensors", tokenizer.path, Path(data) / "manifest.jsonl"
    ) + ("-bf16" if bf16 else "")
    if cache.is_file():
        stored = np.load(cache)
        if str(stored["fingerprint"]) == fingerprint:
            lengths = stored["lengths"]
            return np.split(stored["tokens"], np.cumsum(lengths)[:-1], axis=1)
        log.info("%s is stale: encoding again", cache)
    codec = load_trained_codec(codec_dir, device)
    streams = encode_dialogues(
        data, codec, tokenizer, num_codebooks, device, progress=progress, bf16=bf16
    )
    if bf16:  # what the bf16 convolutions changed: the codes of a few dialogues in fp32 too
        sample = Path(cache).with_suffix(".fp32-sample")
        _sample_folder(data, sample, count=4)
        exact = encode_dialogues(sample, codec, tokenizer, num_codebooks, device, progress=False)
        same = [
            float(
                np.mean(
                    np.concatenate(
                        [a[k] == b[k] for a, b in zip(streams[: len(exact)], exact, strict=True)]
                    )
                )
            )
            for k in range(1, 1 + 2 * num_codebooks)
        ]
        log.info("bf16 encoding: share of codes equal to fp32, per stream: %s",
                 [round(x, 3) for x in same])  # fmt: skip
    np.savez(
        cache,
        tokens=np.concatenate(streams, axis=1),
        lengths=np.array([s.shape[1] for s in streams]),
        fingerprint=np.array(fingerprint),
    )
    return streams


def _sample_folder(data: Path, folder: Path, count: int) -> None:
    """A folder listing the first `count` dialogues of `data` (a manifest of links)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = (Path(data) / "manifest.jsonl").read_text().splitlines()[:count]
    for row in rows:
        name = Path(json.loads(row)["path"])
        for suffix in (".wav", ".json"):
            link = folder / name.with_suffix(suffix)
            if not link.exists():
                link.symlink_to((Path(data) / name.with_suffix(suffix)).resolve())
    (folder / "manifest.jsonl").write_text("\n".join(rows) + "\n")


def codes_used(streams: list[np.ndarray], num_codebooks: int) -> list[int]:
    """How many distinct codes each of the assistant's codebooks uses over all dialogues."""
    return [
        len(np.unique(np.concatenate([s[1 + k] for s in streams]))) for k in range(num_codebooks)
    ]


def check_live_codes(used: list[int], codebook_size: int, minimum: float = 0.05) -> None:
    """Refuse a codec whose codes are nearly dead: an LM learns nothing about audio from it
    (on a codec in its warm-up, with one live code, the semantic loss fell to 4e-7 in 75
    steps)."""
    dead = [k for k, n in enumerate(used) if n < minimum * codebook_size]
    if dead:
        raise ConfigError(
            f"the codec's codebooks {dead} use only {[used[k] for k in dead]} of "
            f"{codebook_size} codes on these dialogues: train the codec longer (its log.jsonl "
            "shows codes_used), or pass --allow-dead-codes"
        )


class WindowSampler:
    """Training windows batched by length, so that short dialogues are not padded to long ones.

    A window is a whole dialogue, or a crop of `frames` of a longer one (from its start half of
    the time, as a conversation starts at inference). Windows fall into buckets of `bucket`
    frames by length; a step takes one bucket (chosen with the odds of a random dialogue) and
    fills `tokens` frames with windows from it. With 250-frame windows and no buckets, 34% of
    every batch was padding."""

    def __init__(self, streams: list[np.ndarray], frames: int, tokens: int, bucket: int = 25):
        self.streams, self.frames, self.tokens = streams, frames, tokens
        lengths = np.array([min(s.shape[1], frames) for s in streams])
        self.edges = np.minimum(frames, -(-lengths // bucket) * bucket)  # bucket's longest
        self.members = {int(e): np.flatnonzero(self.edges == e) for e in np.unique(self.edges)}

    def batch(self, generator: torch.Generator) -> torch.Tensor:
        """[n, streams, T] int64, IGNORE past a dialogue's end; n * T <= tokens."""
        first = int(torch.randint(0, len(self.streams), (1,), generator=generator))
        T = int(self.edges[first])
        members = self.members[T]
        n = max(1, self.tokens // T)
        picks = [first] + [
            int(members[int(torch.randint(0, len(members), (1,), generator=generator))])
            for _ in range(n - 1)
        ]
        out = np.full((n, self.streams[0].shape[0], T), IGNORE, dtype=np.int64)
        for i, index in enumerate(picks):
            tokens = self.streams[index]
            length = tokens.shape[1]
            start = 0
            if length > T and torch.rand(1, generator=generator).item() < 0.5:
                start = int(torch.randint(0, length - T + 1, (1,), generator=generator))
            window = tokens[:, start : start + T]
            out[i, :, : window.shape[1]] = window
        return torch.from_numpy(out)


@torch.no_grad()
def held_out_figures(
    lm: LM, streams: list[np.ndarray], frames: int, pad_weight: float, first_weight: float
) -> dict[str, float]:
    """Teacher-forced loss and text accuracy on held-out dialogues (their first `frames`)."""
    lm.eval()
    device = lm.text_linear.weight.device
    totals: dict[str, float] = {}
    for tokens in streams:
        codes = torch.from_numpy(tokens[None, :, :frames].astype(np.int64)).to(device)
        _, metrics = lm_loss(lm, codes, pad_weight, first_weight)
        for key, value in metrics.items():
            totals[key] = totals.get(key, 0.0) + value / len(streams)
    lm.train()
    return {key: round(value, 4) for key, value in totals.items()}


# --- the command -------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="training dialogues folder")
    parser.add_argument("--codec", type=Path, required=True, help="trained codec run folder")
    parser.add_argument(
        "--tokenizer", type=Path, required=True, help="tokenizer.model or its folder"
    )
    parser.add_argument("--config", choices=sorted(PRESETS), default="demo", help="LM shape")
    loop.add_loop_arguments(parser, batch_size=20)
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    parser.add_argument("--warmup", type=int, default=500, metavar="STEPS")
    parser.add_argument(
        "--frames",
        type=int,
        default=400,
        help="longest training window (frames); longer than the LM's context is fine (the "
        "attention mask keeps the context, as the ring KV cache does at inference)",
    )
    parser.add_argument("--pad-weight", type=float, default=0.5)
    parser.add_argument("--first-codebook-weight", type=float, default=10.0)
    parser.add_argument(
        "--eval-data", type=Path, help="held-out dialogues: loss and text accuracy to the log"
    )
    parser.add_argument(
        "--allow-dead-codes",
        action="store_true",
        help="train even if a codebook of the codec uses under 5%% of its codes",
    )


def run(args: argparse.Namespace) -> int:
    train_lm(args)
    print(f"lm: {args.out / WEIGHTS}")
    return 0


def train_lm(args: argparse.Namespace) -> int:
    """Train (or continue) an LM run; returns the steps done."""
    device = loop.device_from(args.device)
    options = loop.loop_options(args)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = TextTokenizer(
        args.tokenizer / TOKENIZER_FILE if args.tokenizer.is_dir() else args.tokenizer
    )
    codec_config = json.loads((args.codec / "codec.json").read_text())
    codebooks, card = int(codec_config["num_codebooks"]), int(codec_config["codebook_size"])
    config = PRESETS[args.config](tokenizer.vocab_size, card, codebooks)
    generator = loop.seed_everything(args.seed)
    lm = LM(config).to(device).train()
    optimizer = torch.optim.AdamW(lm.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    start = 0
    if (out / loop.CHECKPOINT).is_file():
        start, extra = loop.load_checkpoint(out / loop.CHECKPOINT, lm, optimizer, generator)
        loop.resume_steps(options, extra)
        log.info("lm: resuming %s at step %d", out, start)
    progress = options.progress
    bf16 = not args.no_bf16
    streams = load_or_encode(
        args.data, args.codec, tokenizer, codebooks, device, out / TOKENS, progress, bf16
    )
    used = codes_used(streams, codebooks)
    log.info("lm: %d dialogues; the assistant's codebooks use %s codes", len(streams), used)
    if not args.allow_dead_codes:
        check_live_codes(used, card)
    if args.eval_data is not None:
        held_out = load_or_encode(
            args.eval_data, args.codec, tokenizer, codebooks, device, out / EVAL_TOKENS,
            progress, bf16,
        )[:HELD_OUT_DIALOGUES]  # fmt: skip
        options.evaluate = lambda _step: held_out_figures(
            lm, held_out, args.frames, args.pad_weight, args.first_codebook_weight
        )
    sampler = WindowSampler(streams, args.frames, args.batch_size * args.frames)
    autocast = loop.autocast(device, enabled=not args.no_bf16)

    def step(i: int) -> dict[str, float]:
        for group in optimizer.param_groups:
            group["lr"] = loop.learning_rate(i, args.lr, args.warmup, options.schedule_steps)
        codes = sampler.batch(generator).to(device)
        with autocast:
            loss, metrics = lm_loss(lm, codes, args.pad_weight, args.first_codebook_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        optimizer.step()
        return {"loss": loss.item(), **metrics, "T": float(codes.shape[2])}

    def checkpoint(done: int) -> None:
        extra = {"steps": options.steps}
        loop.save_checkpoint(out / loop.CHECKPOINT, lm, optimizer, done, generator, extra)
        save_lm(lm, out)

    done = loop.train_loop(step, checkpoint, start, options, out, "lm")
    if options.steps is not None and start >= options.steps:
        save_lm(lm, out)
    return done


def save_lm(lm: LM, folder: Path, dtype: torch.dtype = torch.float32) -> None:
    """lm.safetensors and config.json (Kyutai's keyword form)."""
    save_safetensors(lm.state_dict(), folder / WEIGHTS, dtype)
    (folder / CONFIG).write_text(json.dumps(lm_config_to_kyutai(lm.config), indent=1))
