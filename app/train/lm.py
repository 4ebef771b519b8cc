"""`antiphon train lm`: the Moshi-architecture LM on the codec's tokens and the aligned text.

Data (`app.train.lm_data`): every training dialogue becomes streams [1 + 2K, frames] at 12.5 Hz:
the inner monologue, the assistant's K codes, the user's K codes (both channels encoded by the
trained codec). They are encoded once and cached in the run folder (`tokens.npz`; with several
`--data` folders, `tokens-NAME.npz` for each after the first), keyed by the codec's and
tokenizer's bytes and each dialogue's identity. Training windows are `--frames` long
(at most the LM's context), from the start of a dialogue half of the time, as a conversation
starts at inference.

Loss, as Moshi's: cross-entropy of the text stream (PAD frames weighted by `--pad-weight`) +
cross-entropy of the assistant's codebooks, the first (semantic) one weighted more
(`--first-codebook-weight`). Positions with no target (padding, the ends the delays push out)
are ignored.

Plus, for training only, hearing: a linear head on the temporal transformer's output predicts
the *user's* words, each a few frames after it ends (`monologue.heard_tokens`), weighted by
`--hear-weight`. Without it, the first demo LM learned when to speak and the form of its
answers but not what had been asked: recognising words from a codec's acoustic codes is a lot
to learn from the answers alone. The head is not part of the exported model.

A run folder ends with `lm.safetensors` and `config.json` (Kyutai's keyword form).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from model.bundle import save_safetensors
from model.config import LMConfig, demo_lm, tiny_lm
from model.errors import ConfigError
from model.kyutai_config import lm_config_to_kyutai
from model.lm import LM, frames_of
from model.tokenizer import TextTokenizer

from . import loop
from .codec import load_trained_codec
from .dialogues import read_description, read_manifest
from .lm_data import (
    IGNORE,
    WindowSampler,
    check_live_codes,
    codes_used,
    load_or_encode,
    noisy_user_codes,
    with_training_rows,
)
from .lm_start import CONFIG, WEIGHTS, embed_codes, freeze_user_embeddings, init_lm
from .monologue import HEARD_CLOSE_ID, HEARD_OPEN_ID
from .tokenizer import TOKENIZER_FILE

log = logging.getLogger(__name__)

TOKENS = "tokens.npz"
# the run's held-out best so far (lm.safetensors, config.json, best.json): on a few thousand
# dialogues the LM learns the answers by heart, and its last step is seldom its best held-out
BEST, BEST_FIGURES = "best", "best.json"
EVAL_TOKENS = "tokens-eval.npz"

# Teacher-forced figures on this many held-out dialogues (the whole eval folder `train_demo.sh`
# makes, ~840 turns): on 48 (~136 turns) answer_first_acc's binomial spread was ~0.04, as
# large as the differences between the checkpoints the best was kept by. A forward pass: seconds.
HELD_OUT_DIALOGUES = 300
SEEN_DIALOGUES = 48  # training dialogues for the train_* figures: what is learnt by heart


def token_caches(folders: list[Path]) -> list[str]:
    """The token cache of each training folder, in the run folder: tokens.npz for the first
    (as runs of one folder always had it), tokens-NAME.npz for the others, by the folder's name
    (so that another order on the command line finds the same caches), numbered where two
    names would clash."""
    caches = [TOKENS]
    for k, folder in enumerate(folders[1:], start=2):
        name = f"tokens-{folder.name}.npz"
        caches.append(name if name not in (*caches, EVAL_TOKENS) else f"tokens-{k}.npz")
    return caches


def tiny_demo_lm(text_card: int, card: int, codebooks: int) -> LMConfig:
    return tiny_lm(dep_q=codebooks, n_q=2 * codebooks, text_card=text_card, card=card)


PRESETS = {"demo": demo_lm, "tiny": tiny_demo_lm}
# What a resumed run must be given as it started (`loop.resume`).
LEARNING_OPTIONS = (
    "lr", "warmup", "batch_size", "frames", "pad_weight", "first_codebook_weight",
    "hear_weight", "answer_weight", "hear_delay", "monologue_hears", "depth_share", "user_noise",
    "frozen_user_embeddings",
)  # fmt: skip


# --- the loss -----------------------------------------------------------------------------------


class Trainee(torch.nn.Module):
    """What `train lm` optimises: the LM, and the training-only hearing head (None: off)."""

    def __init__(self, lm: LM, hearing: bool):
        super().__init__()
        self.lm = lm
        self.hearing = (
            torch.nn.Linear(lm.config.temporal.dim, lm.config.text_card) if hearing else None
        )


class TextFit(NamedTuple):
    loss: torch.Tensor  # scalar
    accuracy: torch.Tensor  # on the spoken (not PAD, not IGNORE) frames
    hits: torch.Tensor  # [B * T] bool: the argmax is the target


def _text_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    pad_id: int,
    pad_weight: float,
    weight: torch.Tensor | None = None,
) -> TextFit:
    """Cross-entropy of logits [B, T, card] against a text stream target [B, T] (PAD frames
    weighted by pad_weight, IGNORE skipped, other frames by `weight` [B, T] if given) and the
    accuracy on the other (spoken) frames."""
    target = target.flatten()
    ce = F.cross_entropy(
        logits.flatten(0, 1).float(), target, ignore_index=IGNORE, reduction="none"
    )
    weights = torch.where(target == pad_id, pad_weight, 1.0) * (target != IGNORE)
    if weight is not None:
        weights = weights * weight.flatten()
    loss = (ce * weights).sum() / weights.sum().clamp(min=1)
    with torch.no_grad():
        spoken = (target != IGNORE) & (target != pad_id)
        hits = logits.flatten(0, 1).argmax(-1) == target
        accuracy = (hits & spoken).sum() / spoken.sum().clamp(min=1)
    return TextFit(loss, accuracy, hits)


def lm_loss(
    lm: LM,
    codes: torch.Tensor,
    pad_weight: float = 0.5,
    first_codebook_weight: float = 10.0,
    hearing: torch.nn.Module | None = None,
    hear_weight: float = 1.0,
    depth_frames: torch.Tensor | None = None,
    answer_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Moshi's training loss on codes [B, streams, T] (IGNORE where there is no token), plus,
    with a `hearing` head, the hearing loss against one more row of codes: the user's heard
    words (`with_training_rows`). With `depth_frames` (flat indices into the B * T frames), the
    audio loss is taken on those frames only (`LM.forward_delayed`). Where the codes carry
    `with_training_rows`' answer row, the text tokens that make an answer right weigh
    `answer_weight` and their accuracy is reported (answer_acc, and answer_first_acc on each
    answer's first token; *_right/*_count for sums over batches).

    Computed against the delayed targets (`LM.forward_delayed`): every (logit, target) pair is
    the one the aligned loss would use, without copying the logits back into aligned time."""
    config = lm.config
    streams = config.num_streams
    text_logits, audio_logits, targets, hidden = lm.forward_delayed(
        codes[:, :streams], depth_frames
    )
    answer = first = None
    if codes.shape[1] > streams + 1:  # IGNORE (padding) and 0 are not answers
        answer, first = codes[:, streams + 1] > 0, codes[:, streams + 1] == 2  # [B, T]
    text = _text_loss(
        text_logits, targets[:, 0], config.text_padding_id, pad_weight,
        None if answer is None else 1.0 + (answer_weight - 1.0) * answer.float(),
    )  # fmt: skip
    text_loss = text.loss

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
        "text_acc": text.accuracy.item(),
    }
    if answer is not None and first is not None:
        for name, where in (("answer", answer), ("answer_first", first)):
            right, count = int((text.hits & where.flatten()).sum()), int(where.sum())
            metrics |= {f"{name}_acc": right / max(1, count), f"{name}_right": right,
                        f"{name}_count": count}  # fmt: skip
    loss = text_loss + audio_loss
    if hearing is not None:
        # hidden[:, t] has heard the user up to frame t (one ahead, semantic codes undelayed)
        heard = _text_loss(hearing(hidden), codes[:, streams], config.text_padding_id, pad_weight)
        metrics |= {"heard": heard.loss.item(), "heard_acc": heard.accuracy.item()}
        loss = loss + hear_weight * heard.loss
    return loss, metrics


@torch.no_grad()
def held_out_figures(
    model: Trainee,
    streams: list[np.ndarray],
    frames: int,
    pad_weight: float,
    first_weight: float,
    new_voice: Sequence[bool] = (),
) -> dict[str, float]:
    """Teacher-forced loss and text accuracy on held-out dialogues (their first `frames`);
    with a hearing head, also how well it writes down the user's words (heard_acc); and how
    often the tokens that make an answer right are the most likely ones (answer_acc, and
    answer_first_acc on each answer's first token, over all of those tokens). Where
    `new_voice` marks the dialogues whose user is the held-out voice, the accuracies on those
    alone as well (voice_*): the same passes, summed apart."""
    model.eval()
    device = model.lm.text_linear.weight.device
    per_dialogue = []
    for tokens in streams:
        codes = torch.from_numpy(tokens[None, :, :frames].astype(np.int64)).to(device)
        per_dialogue.append(lm_loss(model.lm, codes, pad_weight, first_weight, model.hearing)[1])
    model.train()
    figures = _mean_figures(per_dialogue)
    chosen = [m for m, new in zip(per_dialogue, new_voice, strict=False) if new]
    if chosen:
        figures |= {
            f"voice_{key}": value
            for key, value in _mean_figures(chosen).items()
            if key in ("text_acc", "heard_acc", "answer_acc", "answer_first_acc")
        }
    return figures


def _mean_figures(per_dialogue: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's mean over dialogues; the answer accuracies over all such tokens."""
    totals: dict[str, float] = {}
    for metrics in per_dialogue:
        for key, value in metrics.items():
            totals[key] = totals.get(key, 0.0) + value / len(per_dialogue)
    for name in ("answer", "answer_first"):
        if f"{name}_count" in totals:
            right, count = totals.pop(f"{name}_right"), totals.pop(f"{name}_count")
            totals[f"{name}_acc"] = right / max(1e-9, count)
    return {key: round(value, 4) for key, value in totals.items()}


# --- the command -------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", type=Path, nargs="+", required=True,
        help="training dialogue folders (each encoded once, into a cache of its own)",
    )  # fmt: skip
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
        "--answer-weight",
        type=float,
        default=1.0,
        help="weight of the text tokens that make an answer right (the number, the letters, "
        "yes or no: `monologue.answer_frames`) against the other spoken tokens",
    )
    parser.add_argument(
        "--hear-delay",
        type=int,
        default=2,
        metavar="FRAMES",
        help="the hearing head writes a user's word this many frames after it ends",
    )
    parser.add_argument(
        "--monologue-hears",
        action="store_true",
        help="the monologue writes down the user's words too (--hear-delay frames after each "
        "word ends, between two marks the runtime shows as what the model heard), so that an "
        "answer is made from written words (`monologue.hearing_text_tokens`)",
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
        "--user-noise",
        type=float,
        nargs=2,
        default=(0.0, 0.0),
        metavar=("SEMANTIC", "ACOUSTIC"),
        help="replace these shares of the user's codes by random ones in every batch: of the "
        "first (semantic) codebook's, and of the others' (0 0: off), so that hearing cannot "
        "lean on the exact codes of a training voice",
    )
    parser.add_argument(
        "--init",
        type=Path,
        metavar="RUN",
        help="start a new run from another LM run's lm.safetensors (same shapes), with a new "
        "learning-rate schedule",
    )
    parser.add_argument(
        "--codec-embeddings",
        action="store_true",
        help="start the LM's audio embeddings from the codec's codebooks (each code's vector "
        "in the codec's latent, projected to the LM's width): codes that sound alike start "
        "alike, which a small dataset cannot teach; with --init, replaces the init's audio "
        "embeddings (learnt on another codec's codes, they mean nothing on this one's)",
    )
    parser.add_argument(
        "--frozen-user-embeddings",
        action="store_true",
        help="never train the user's audio embedding tables: they stay where --codec-embeddings "
        "(or the --init run) put them, in the codec's geometry, and the LM learns to read them "
        "instead of moving them toward its training voices' exact codes",
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
    options = loop.loop_options(args, LEARNING_OPTIONS)
    if not 0.0 < args.depth_share <= 1.0:
        raise ConfigError(f"--depth-share {args.depth_share}: a share of the frames, in (0, 1]")
    if not all(0.0 <= share <= 1.0 for share in args.user_noise):
        shares = " ".join(f"{share:g}" for share in args.user_noise)
        raise ConfigError(f"--user-noise {shares}: two shares of the codes, each in [0, 1]")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = TextTokenizer(
        args.tokenizer / TOKENIZER_FILE if args.tokenizer.is_dir() else args.tokenizer
    )
    codec_config = json.loads((args.codec / "codec.json").read_text())
    codebooks, card = int(codec_config["num_codebooks"]), int(codec_config["codebook_size"])
    config = PRESETS[args.config](tokenizer.vocab_size, card, codebooks)
    if args.monologue_hears:
        config = dataclasses.replace(config, heard_ids=(HEARD_OPEN_ID, HEARD_CLOSE_ID))
    resuming = (out / loop.CHECKPOINT).is_file()
    if args.frozen_user_embeddings and not (resuming or args.codec_embeddings or args.init):
        raise ConfigError(
            "--frozen-user-embeddings keeps the user's embeddings where they start: give "
            "--codec-embeddings (the codec's geometry) or --init (a trained run's), not "
            "random ones"
        )
    generator = loop.seed_everything(args.seed)
    lm = LM(config)
    hearing = args.hear_weight > 0
    model = Trainee(lm, hearing).to(device).train()
    if args.frozen_user_embeddings:
        freeze_user_embeddings(lm)
    optimizer = torch.optim.AdamW(
        [param for param in model.parameters() if param.requires_grad],
        lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1,
    )  # fmt: skip
    start = 0
    if resuming:
        start, extra = loop.load_checkpoint(
            out / loop.CHECKPOINT, model, optimizer, generator,
            "shape, another --hear-weight or --frozen-user-embeddings",
        )  # fmt: skip
        loop.resume(options, extra, out, start)
        log.info("lm: resuming %s at step %d", out, start)
    elif args.init is not None:
        init_lm(lm, args.init)
        log.info("lm: starting from %s", args.init / WEIGHTS)
        for cache in [*token_caches(args.data), EVAL_TOKENS]:  # its encoding, if of the same
            if not (out / cache).is_file() and (args.init / cache).is_file():  # dialogues,
                shutil.copyfile(args.init / cache, out / cache)  # codec and tokenizer: checked
    if args.codec_embeddings and start == 0:
        codec = load_trained_codec(args.codec, torch.device("cpu"))
        embed_codes(lm, codec.quantizer.code_vectors(codebooks), args.seed)
        log.info("lm: audio embeddings from %s's codebooks", args.codec)
    progress = options.progress
    bf16 = not args.no_bf16 and loop.bf16_pays(device)  # the caches say what was used
    frame_rate = float(codec_config["frame_rate"])
    streams = []
    for cache, folder in zip(token_caches(args.data), args.data, strict=True):
        encoded = load_or_encode(
            folder, args.codec, tokenizer, codebooks, device, out / cache, progress, bf16
        )
        streams += with_training_rows(
            folder, encoded, tokenizer, frame_rate, args.hear_delay, args.monologue_hears
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
        held_out = with_training_rows(
            args.eval_data, held_out, tokenizer, frame_rate, args.hear_delay, args.monologue_hears
        )
        new_voice = [
            bool(read_description(path).get("held_out_voice"))
            for path in read_manifest(args.eval_data)[: len(held_out)]
        ]
        seen = streams[:: max(1, len(streams) // SEEN_DIALOGUES)][:SEEN_DIALOGUES]

        def figures(done: int) -> dict[str, float]:
            """Held-out figures, and the same on as many training dialogues (train_*): what
            the LM has learnt by heart against what it has learnt; the weights are kept in
            out/best when they are the best held-out so far."""
            weights = (args.pad_weight, args.first_codebook_weight)
            result = held_out_figures(model, held_out, args.frames, *weights, new_voice) | {
                f"train_{key}": value
                for key, value in held_out_figures(model, seen, args.frames, *weights).items()
                if key in ("text_acc", "heard_acc", "answer_acc", "answer_first_acc")
            }
            keep_if_best(lm, out / BEST, done, result)
            return result

        options.evaluate = figures
        options.evaluate_first = args.init is not None
    sampler = WindowSampler(streams, args.frames, args.batch_size * args.frames)
    autocast = loop.autocast(device, enabled=not args.no_bf16)

    def step(i: int) -> dict[str, float]:
        for group in optimizer.param_groups:
            group["lr"] = loop.learning_rate(i, args.lr, args.warmup, options.schedule_steps)
        semantic, acoustic = args.user_noise
        codes = noisy_user_codes(sampler.batch(generator), lm.config, semantic, acoustic, generator)
        codes = codes.to(device)
        depth_frames = None
        if args.depth_share < 1.0:
            frames = codes.shape[0] * codes.shape[2]
            chosen = torch.randperm(frames, generator=generator)
            depth_frames = chosen[: math.ceil(args.depth_share * frames)].sort().values.to(device)
        with autocast:
            loss, metrics = lm_loss(
                lm, codes, args.pad_weight, args.first_codebook_weight, model.hearing,
                args.hear_weight, depth_frames, args.answer_weight,
            )  # fmt: skip
        for key in ("answer_right", "answer_count", "answer_first_right", "answer_first_count"):
            metrics.pop(key, None)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return {"loss": loss.item(), **metrics, "T": float(codes.shape[2])}

    def checkpoint(done: int) -> None:
        loop.save_checkpoint(
            out / loop.CHECKPOINT, model, optimizer, done, generator, options.checkpoint_extra()
        )
        save_lm(lm, out)

    done = loop.train_loop(step, checkpoint, start, options, out, "lm")
    if options.steps is not None and start >= options.steps:
        save_lm(lm, out)
    return done


def answer_score(figures: dict[str, float]) -> float:
    """How right the held-out answers are: the mean of the accuracy on every token that makes
    an answer right and on each answer's first one (its text accuracy where there are none)."""
    if "answer_acc" in figures and "answer_first_acc" in figures:
        return (figures["answer_acc"] + figures["answer_first_acc"]) / 2
    return figures["text_acc"]


def keep_if_best(lm: LM, folder: Path, step: int, figures: dict[str, float]) -> bool:
    """Save the weights to `folder` if their held-out answer score beats the one kept there
    (written beside them, so a resumed run keeps comparing with it); True if saved."""
    score = answer_score(figures)
    kept = folder / BEST_FIGURES
    if kept.is_file():
        try:
            best = float(json.loads(kept.read_text())["score"])
        except (ValueError, KeyError, TypeError) as error:  # a hand-edited or damaged file
            log.warning("lm: %s is unreadable (%s): these weights replace the best kept", kept,
                        error)  # fmt: skip
            best = -math.inf
        if best >= score:
            return False
    folder.mkdir(parents=True, exist_ok=True)
    kept.unlink(missing_ok=True)  # weights and figures agree even if stopped while saving
    save_lm(lm, folder)
    kept.write_text(json.dumps({"step": step, "score": round(score, 4), "figures": figures}))
    log.info("lm: held-out best so far at step %d (answer score %.4f): %s", step, score, folder)
    return True


def save_lm(lm: LM, folder: Path, dtype: torch.dtype = torch.float32) -> None:
    """lm.safetensors and config.json (Kyutai's keyword form)."""
    save_safetensors(lm.state_dict(), folder / WEIGHTS, dtype)
    (folder / CONFIG).write_text(json.dumps(lm_config_to_kyutai(lm.config), indent=1))
