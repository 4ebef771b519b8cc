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

Plus, for training only, hearing: a linear head on the temporal transformer's output predicts
the *user's* words, each a few frames after it ends (`dialogues.heard_tokens`), weighted by
`--hear-weight`. Without it, the first demo LM learned when to speak and the form of its
answers but not what had been asked: recognising words from a codec's acoustic codes is a lot
to learn from the answers alone. The head is not part of the exported model.

A run folder ends with `lm.safetensors` and `config.json` (Kyutai's keyword form).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tqdm import tqdm

from app.core.files import write_atomically
from model.bundle import save_safetensors
from model.codec import Codec
from model.config import LMConfig, demo_lm, tiny_lm
from model.errors import ConfigError
from model.kyutai_config import lm_config_to_kyutai
from model.lm import LM, frames_of
from model.tokenizer import TextTokenizer

from . import loop
from .codec import load_trained_codec
from .dialogues import heard_tokens, read_dialogue, read_manifest, text_tokens
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


class Trainee(torch.nn.Module):
    """What `train lm` optimises: the LM, and the training-only hearing head (None: off)."""

    def __init__(self, lm: LM, hearing: bool):
        super().__init__()
        self.lm = lm
        self.hearing = (
            torch.nn.Linear(lm.config.temporal.dim, lm.config.text_card) if hearing else None
        )


def _text_loss(
    logits: torch.Tensor, target: torch.Tensor, pad_id: int, pad_weight: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of logits [B, T, card] against a text stream target [B, T] (PAD frames
    weighted by pad_weight, IGNORE skipped) and the accuracy on the other (spoken) frames."""
    target = target.flatten()
    ce = F.cross_entropy(
        logits.flatten(0, 1).float(), target, ignore_index=IGNORE, reduction="none"
    )
    weight = torch.where(target == pad_id, pad_weight, 1.0) * (target != IGNORE)
    loss = (ce * weight).sum() / weight.sum().clamp(min=1)
    with torch.no_grad():
        spoken = (target != IGNORE) & (target != pad_id)
        hits = (logits.flatten(0, 1).argmax(-1) == target) & spoken
        accuracy = hits.sum() / spoken.sum().clamp(min=1)
    return loss, accuracy


def lm_loss(
    lm: LM,
    codes: torch.Tensor,
    pad_weight: float = 0.5,
    first_codebook_weight: float = 10.0,
    hearing: torch.nn.Module | None = None,
    hear_weight: float = 1.0,
    depth_frames: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Moshi's training loss on codes [B, streams, T] (IGNORE where there is no token), plus,
    with a `hearing` head, the hearing loss against one more row of codes: the user's heard
    words (`with_heard_words`). With `depth_frames` (flat indices into the B * T frames), the
    audio loss is taken on those frames only (`LM.forward_delayed`).

    Computed against the delayed targets (`LM.forward_delayed`): every (logit, target) pair is
    the one the aligned loss would use, without copying the logits back into aligned time."""
    config = lm.config
    streams = config.num_streams
    text_logits, audio_logits, targets, hidden = lm.forward_delayed(
        codes[:, :streams], depth_frames
    )
    text_loss, text_accuracy = _text_loss(
        text_logits, targets[:, 0], config.text_padding_id, pad_weight
    )

    audio_target = targets[:, 1 : config.dep_q + 1]  # [B, dep_q, T]
    if depth_frames is not None:
        audio_target = frames_of(audio_target, depth_frames)  # [1, dep_q, N]
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
    metrics = {
        "text": text_loss.item(),
        "audio": audio_loss.item(),
        "sem": per_codebook[0].item(),
        "text_acc": text_accuracy.item(),
    }
    loss = text_loss + audio_loss
    if hearing is not None:
        # hidden[:, t] has heard the user up to frame t (one ahead, semantic codes undelayed)
        hear_loss, hear_accuracy = _text_loss(
            hearing(hidden), codes[:, streams], config.text_padding_id, pad_weight
        )
        metrics |= {"heard": hear_loss.item(), "heard_acc": hear_accuracy.item()}
        loss = loss + hear_weight * hear_loss
    return loss, metrics


# --- data ----------------------------------------------------------------------------------------


def _fingerprint(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()


class _Encoded:
    """Dialogues encoded so far (index in the manifest -> streams), saved every few minutes, so
    that an encoding that is stopped goes on where it stopped (with the same fingerprint)."""

    SAVE_EVERY_S = 180.0

    def __init__(self, path: Path | None, fingerprint: str) -> None:
        self.path, self.fingerprint = path, fingerprint
        self.done: dict[int, np.ndarray] = {}
        self.saved = time.monotonic()
        if path is not None and path.is_file():
            stored = np.load(path)
            if str(stored["fingerprint"]) == fingerprint:
                parts = np.split(stored["tokens"], np.cumsum(stored["lengths"])[:-1], axis=1)
                self.done = dict(zip(stored["indices"].tolist(), parts, strict=True))
                log.info("encoding: %d dialogues already done (%s)", len(self.done), path)

    def add(self, index: int, streams: np.ndarray) -> None:
        self.done[index] = streams
        if self.path is not None and time.monotonic() - self.saved > self.SAVE_EVERY_S:
            self.save()

    def save(self) -> None:
        assert self.path is not None
        indices = sorted(self.done)
        tokens = np.concatenate([self.done[i] for i in indices], axis=1)
        lengths = np.array([self.done[i].shape[1] for i in indices])
        write_atomically(
            self.path,
            lambda tmp: np.savez(
                tmp, tokens=tokens, lengths=lengths, indices=np.array(indices),
                fingerprint=np.array(self.fingerprint),
            ),
        )  # fmt: skip
        self.saved = time.monotonic()


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
    encoded: _Encoded | None = None,
) -> list[np.ndarray]:
    """Each dialogue as int16 [1 + 2 * num_codebooks, frames]: text, assistant, user; the
    user's streams one frame ahead (column t holds the user's frame t + 1, -1 at the end), so
    that teacher forcing conditions on what `LM.step` hears (`model.lm.user_ahead`).

    With `bf16`, the codec's convolutions run under bf16 autocast (2.4x faster on this CPU;
    the quantizer stays fp32): `train lm` measures and logs how many codes differ from fp32.
    Dialogues are encoded longest first (a batch pads to its longest: similar lengths waste
    less); `encoded` keeps what is done, to go on after a stop."""
    codec = codec.to(device).eval()
    autocast = loop.autocast(device, enabled=bf16)
    frame_rate, frame_size = codec.config.frame_rate, codec.frame_size
    files = read_manifest(folder)
    encoded = encoded or _Encoded(None, "")
    order = sorted(
        set(range(len(files))) - set(encoded.done), key=lambda i: -files[i].stat().st_size
    )
    batches = [order[first : first + batch] for first in range(0, len(order), batch)]
    every = max(1, len(batches) // 20)  # without a bar: a log line per 5%
    for b, chosen in enumerate(tqdm(batches, desc="encoding", disable=not progress)):
        if not progress and b % every == 0:
            log.info("encoding %s: %d/%d dialogues", folder, len(encoded.done), len(files))
        loaded = [read_dialogue(files[i]) for i in chosen]
        frames = [math.ceil(pcm.shape[1] / frame_size) for pcm, _ in loaded]
        stereo = np.zeros((len(loaded), 2, max(frames) * frame_size), dtype=np.float32)
        for i, (pcm, _) in enumerate(loaded):
            stereo[i, :, : pcm.shape[1]] = pcm
        pcm_batch = torch.from_numpy(stereo).to(device).view(-1, 1, stereo.shape[-1])
        # [2B, K, frames]; the codec is causal, so the zero padding changes no earlier frame
        with autocast:
            latent = codec.latent(pcm_batch)
        found = codec.quantizer.encode(latent, num_codebooks)
        codes = found.reshape(len(loaded), 2 * num_codebooks, -1).cpu().numpy()
        for i, (index, (_, description), n) in enumerate(zip(chosen, loaded, frames, strict=True)):
            text = text_tokens(description["alignments"], tokenizer.encode, n, frame_rate)
            assistant, user = codes[i, :num_codebooks, :n], codes[i, num_codebooks:, :n]
            # the user one frame ahead, as `LM.step` hears it (model.lm.user_ahead)
            user = np.concatenate([user[:, 1:], np.full_like(user[:, :1], IGNORE)], axis=1)
            streams = np.concatenate([np.array(text)[None], assistant, user]).astype(np.int16)
            encoded.add(index, streams)
    return [encoded.done[i] for i in range(len(files))]


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
    partial_path = Path(cache).with_suffix(".partial.npz")
    partial = _Encoded(partial_path, fingerprint)
    streams = encode_dialogues(
        data, codec, tokenizer, num_codebooks, device, progress=progress, bf16=bf16,
        encoded=partial,
    )  # fmt: skip
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
    partial_path.unlink(missing_ok=True)
    return streams


def with_heard_words(
    data: Path,
    streams: list[np.ndarray],
    tokenizer: TextTokenizer,
    frame_rate: float,
    delay_frames: int,
) -> list[np.ndarray]:
    """Each dialogue's streams with one more row: the user's words as the hearing head's
    targets (`heard_tokens`). From the dialogues' alignments: seconds, no codec."""
    out = []
    for path, tokens in zip(read_manifest(data)[: len(streams)], streams, strict=True):
        description = json.loads(path.with_suffix(".json").read_text())
        heard = heard_tokens(
            description["alignments"], tokenizer.encode, tokens.shape[1], frame_rate, delay_frames
        )
        out.append(np.concatenate([tokens, np.array(heard, dtype=tokens.dtype)[None]]))
    return out


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
    model: Trainee,
    streams: list[np.ndarray],
    frames: int,
    pad_weight: float,
    first_weight: float,
) -> dict[str, float]:
    """Teacher-forced loss and text accuracy on held-out dialogues (their first `frames`);
    with a hearing head, also how well it writes down the user's words (heard_acc)."""
    model.eval()
    device = model.lm.text_linear.weight.device
    totals: dict[str, float] = {}
    for tokens in streams:
        codes = torch.from_numpy(tokens[None, :, :frames].astype(np.int64)).to(device)
        _, metrics = lm_loss(model.lm, codes, pad_weight, first_weight, model.hearing)
        for key, value in metrics.items():
            totals[key] = totals.get(key, 0.0) + value / len(streams)
    model.train()
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
        "--hear-weight",
        type=float,
        default=1.0,
        help="weight of the training-only hearing loss (predicting the user's words; 0: off)",
    )
    parser.add_argument(
        "--hear-delay",
        type=int,
        default=2,
        metavar="FRAMES",
        help="the hearing head writes a user's word this many frames after it ends",
    )
    parser.add_argument(
        "--depth-share",
        type=float,
        default=1.0,
        metavar="SHARE",
        help="run the depth transformer (the audio loss) on this random share of each batch's "
        "frames: on a CPU it is two thirds of a step of the demo LM, and the text and hearing "
        "losses keep every frame (1: all frames)",
    )
    parser.add_argument(
        "--init",
        type=Path,
        metavar="RUN",
        help="start a new run from another LM run's lm.safetensors (same shapes), with a new "
        "learning-rate schedule",
    )
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
    if not 0.0 < args.depth_share <= 1.0:
        raise ConfigError(f"--depth-share {args.depth_share}: a share of the frames, in (0, 1]")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = TextTokenizer(
        args.tokenizer / TOKENIZER_FILE if args.tokenizer.is_dir() else args.tokenizer
    )
    codec_config = json.loads((args.codec / "codec.json").read_text())
    codebooks, card = int(codec_config["num_codebooks"]), int(codec_config["codebook_size"])
    config = PRESETS[args.config](tokenizer.vocab_size, card, codebooks)
    generator = loop.seed_everything(args.seed)
    lm = LM(config)
    hearing = args.hear_weight > 0
    model = Trainee(lm, hearing).to(device).train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1
    )
    start = 0
    if (out / loop.CHECKPOINT).is_file():
        try:
            start, extra = loop.load_checkpoint(out / loop.CHECKPOINT, model, optimizer, generator)
        except (RuntimeError, ValueError, KeyError) as error:
            raise ConfigError(
                f"{out / loop.CHECKPOINT} does not fit this run (another shape, another "
                f"--hear-weight, or an older antiphon): {_detail(error)}. Continue it with the "
                f"options it started with, or start a new --out with --init {out}"
            ) from error
        loop.resume_steps(options, extra)
        log.info("lm: resuming %s at step %d", out, start)
    elif args.init is not None:
        init_lm(lm, args.init)
        log.info("lm: starting from %s", args.init / WEIGHTS)
        for cache in (TOKENS, EVAL_TOKENS):  # its encoding, if of the same dialogues, codec and
            if not (out / cache).is_file() and (args.init / cache).is_file():  # tokenizer:
                shutil.copyfile(args.init / cache, out / cache)  # load_or_encode checks that
    progress = options.progress
    bf16 = not args.no_bf16
    streams = load_or_encode(
        args.data, args.codec, tokenizer, codebooks, device, out / TOKENS, progress, bf16
    )
    frame_rate = float(codec_config["frame_rate"])
    if hearing:
        streams = with_heard_words(args.data, streams, tokenizer, frame_rate, args.hear_delay)
    used = codes_used(streams, codebooks)
    log.info("lm: %d dialogues; the assistant's codebooks use %s codes", len(streams), used)
    if not args.allow_dead_codes:
        check_live_codes(used, card)
    if args.eval_data is not None:
        held_out = load_or_encode(
            args.eval_data, args.codec, tokenizer, codebooks, device, out / EVAL_TOKENS,
            progress, bf16,
        )[:HELD_OUT_DIALOGUES]  # fmt: skip
        if hearing:
            held_out = with_heard_words(
                args.eval_data, held_out, tokenizer, frame_rate, args.hear_delay
            )
        options.evaluate = lambda _step: held_out_figures(
            model, held_out, args.frames, args.pad_weight, args.first_codebook_weight
        )
    sampler = WindowSampler(streams, args.frames, args.batch_size * args.frames)
    autocast = loop.autocast(device, enabled=not args.no_bf16)

    def step(i: int) -> dict[str, float]:
        for group in optimizer.param_groups:
            group["lr"] = loop.learning_rate(i, args.lr, args.warmup, options.schedule_steps)
        codes = sampler.batch(generator).to(device)
        depth_frames = None
        if args.depth_share < 1.0:
            frames = codes.shape[0] * codes.shape[2]
            chosen = torch.randperm(frames, generator=generator)
            depth_frames = chosen[: math.ceil(args.depth_share * frames)].sort().values.to(device)
        with autocast:
            loss, metrics = lm_loss(
                lm, codes, args.pad_weight, args.first_codebook_weight, model.hearing,
                args.hear_weight, depth_frames,
            )  # fmt: skip
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return {"loss": loss.item(), **metrics, "T": float(codes.shape[2])}

    def checkpoint(done: int) -> None:
        extra = {"steps": options.steps}
        loop.save_checkpoint(out / loop.CHECKPOINT, model, optimizer, done, generator, extra)
        save_lm(lm, out)

    done = loop.train_loop(step, checkpoint, start, options, out, "lm")
    if options.steps is not None and start >= options.steps:
        save_lm(lm, out)
    return done


def init_lm(lm: LM, run: Path) -> None:
    """Load another LM run's weights into `lm`, refusing another shape with one clear line."""
    path = run / WEIGHTS
    if not path.is_file():
        raise ConfigError(f"--init {run}: no {WEIGHTS} there (an LM run folder has one)")
    try:
        lm.load_state_dict(load_file(str(path)))
    except RuntimeError as error:
        raise ConfigError(
            f"--init {run}: its LM has another shape than this run's (--config, tokenizer, "
            f"codec): {_detail(error)}"
        ) from error


def _detail(error: Exception) -> str:
    """The line of a load_state_dict error that names the keys (its first line names only the
    module), or the error's first line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    line = lines[1] if len(lines) > 1 else (lines[0] if lines else type(error).__name__)
    return line.rstrip(".")


def save_lm(lm: LM, folder: Path, dtype: torch.dtype = torch.float32) -> None:
    """lm.safetensors and config.json (Kyutai's keyword form)."""
    save_safetensors(lm.state_dict(), folder / WEIGHTS, dtype)
    (folder / CONFIG).write_text(json.dumps(lm_config_to_kyutai(lm.config), indent=1))
