"""`antiphon train codec`: the Mimi-architecture codec on speech from the dialogues.

Losses: multi-resolution log-mel L1 + a little waveform L1 + the VQ commitment loss; the
gradient passes the quantizer straight through, and codebooks learn by EMA into Kyutai's
`embedding_sum` / `cluster_usage` layout (`model.quantizer`), so the result loads with
`model.checkpoint.load_codec`. As in Mimi's training, the latent is quantized for only part of
each batch (`--quantize-probability`), which helps the decoder. No adversarial losses. Where
Mimi distils WavLM into the first codebook, this codec learns there the hidden states of a small
speech recogniser trained on the same dialogues (`--teacher`, `app.train.teacher`), and can learn
phonemes directly too (`--phoneme-weight`, `app.train.phonemes`): training-only heads on the
first codebook's output, so that its codes say what is said, whoever says it.

A run folder ends with `codec.safetensors` and `codec.json` (the MimiConfig).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from model.bundle import mimi_config_from_dict, save_safetensors
from model.checkpoint import load_codec
from model.codec import Codec
from model.config import demo_mimi, tiny_mimi
from model.errors import ConfigError
from model.quantizer import CodebookTraining

from . import loop
from .dialogues import ASSISTANT, USER, read_description, read_dialogue, read_manifest
from .features import MultiResolutionMelLoss
from .phonemes import SILENCE, SUBSTEPS, UNKNOWN, PhonemeTable, load_or_build
from .stoi import stoi
from .teacher import Teacher, load_teacher

log = logging.getLogger(__name__)

WEIGHTS, CONFIG = "codec.safetensors", "codec.json"


PRESETS = {"demo": demo_mimi, "tiny": lambda: tiny_mimi(num_codebooks=4)}


# What a resumed run must be given as it started (`loop.resume`).
LEARNING_OPTIONS = (
    "lr", "warmup", "batch_size", "segment", "quantize_probability", "codebook_decay",
    "vq_start", "phoneme_weight", "distill_weight", "waveform_weight", "commitment_weight",
)  # fmt: skip

CHANNELS = (ASSISTANT, USER)  # a dialogue's channels, in the order of its WAV file


class Crops(NamedTuple):
    pcm: torch.Tensor  # [B, 1, samples]
    phonemes: torch.Tensor | None  # [B, frames, SUBSTEPS] labels (with a phoneme table)


class SpeechSegments:
    """Random whole-frame crops with speech in them, from every channel of the dialogues, and
    with a phoneme table, each crop's phoneme labels (`app.train.phonemes`)."""

    def __init__(
        self,
        folder: str | Path,
        max_hours: float,
        sample_rate: int,
        frame_rate: float = 12.5,
        phonemes: PhonemeTable | None = None,
    ) -> None:
        self.frame_size = round(sample_rate / frame_rate)
        self.channels: list[np.ndarray] = []  # int16, to halve the memory
        self.labels: list[np.ndarray] = []  # [frames, SUBSTEPS] per channel, with `phonemes`
        total = 0
        for wav in read_manifest(folder):
            pcm, meta = read_dialogue(wav)
            for channel, speaker in zip(pcm, CHANNELS, strict=True):
                self.channels.append((channel * 32767).astype(np.int16))
                if phonemes is not None:
                    frames = -(-len(channel) // self.frame_size)
                    self.labels.append(
                        phonemes.frame_labels(meta["alignments"], speaker, frames, frame_rate)
                    )
                total += len(channel)
            if total > max_hours * 3600 * sample_rate:
                break
        if not self.channels:
            raise ConfigError(f"{folder}: no dialogues (generate them with `train data`)")
        self.lengths = torch.tensor([len(c) for c in self.channels], dtype=torch.float64)
        log.info("codec data: %.2f h of channels", total / sample_rate / 3600)

    def batch(self, size: int, samples: int, generator: torch.Generator) -> Crops:
        """[size, 1, samples] float32 starting on frame boundaries (a crop that is nearly
        silent is drawn again, 5 tries), and their labels [size, frames, SUBSTEPS]."""
        frames = -(-samples // self.frame_size)
        out = np.zeros((size, 1, samples), dtype=np.float32)
        labels = np.full((size, frames, SUBSTEPS), UNKNOWN, dtype=np.int64)
        for i in range(size):
            for _ in range(5):
                c = int(torch.multinomial(self.lengths, 1, generator=generator))
                channel = self.channels[c]
                last = max(0, len(channel) - samples) // self.frame_size
                first = int(torch.randint(0, last + 1, (1,), generator=generator))
                start = first * self.frame_size
                crop = channel[start : start + samples].astype(np.float32) / 32767
                if np.sqrt(np.mean(crop**2)) > 3e-3:
                    break
            out[i, 0, : len(crop)] = crop
            if self.labels:
                known = self.labels[c][first : first + frames]
                labels[i, : len(known)] = known
        return Crops(torch.from_numpy(out), torch.from_numpy(labels) if self.labels else None)


class Trainee(torch.nn.Module):
    """What `train codec` optimises: the codec, and the training-only phoneme head on its
    first codebook's output (None: off)."""

    def __init__(
        self, codec: Codec, phoneme_classes: int | None = None, teacher_dim: int | None = None
    ) -> None:
        super().__init__()
        self.codec = codec
        dim = codec.config.seanet.dimension
        self.phonemes = None if phoneme_classes is None else torch.nn.Linear(dim, phoneme_classes)
        self.distill = None if teacher_dim is None else torch.nn.Linear(dim, teacher_dim)


def distill_loss(projected: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - the cosine similarity of the first codebook's projected output [B, T, D] and the
    teacher's states [B, T, D], over every frame (Mimi's distillation loss)."""
    frames = min(projected.shape[1], target.shape[1])
    cosine = F.cosine_similarity(projected[:, :frames].float(), target[:, :frames].float(), dim=-1)
    return 1 - cosine.mean()


class PhonemeFit(NamedTuple):
    loss: torch.Tensor  # scalar
    right: torch.Tensor  # speech frames whose most common label the argmax finds
    speech: torch.Tensor  # frames whose most common label is not SILENCE


def phoneme_loss(logits: torch.Tensor, labels: torch.Tensor) -> PhonemeFit:
    """Cross-entropy of logits [B, T, C] against each frame's mix of labelled instants
    (labels [B, T, SUBSTEPS]; UNKNOWN instants left out), and how often the argmax finds the
    frame's most common label where that is a phoneme."""
    known = labels != UNKNOWN
    counts = (F.one_hot(labels.clamp(min=0), logits.shape[-1]) * known[..., None]).sum(2)
    labelled = known.any(2)  # [B, T]
    target = counts.float() / counts.sum(-1, keepdim=True).clamp(min=1)
    ce = -(target * F.log_softmax(logits.float(), dim=-1)).sum(-1)
    loss = (ce * labelled).sum() / labelled.sum().clamp(min=1)
    with torch.no_grad():
        majority = counts.argmax(-1)
        speech = labelled & (majority != SILENCE)
        right = ((logits.argmax(-1) == majority) & speech).sum()
    return PhonemeFit(loss, right, speech.sum())


def _alignments(wav: Path) -> list:
    return list(read_description(wav)["alignments"])


class Reconstruction(NamedTuple):
    pcm: torch.Tensor  # [B, 1, samples] fp32
    commitment: torch.Tensor  # scalar
    codes: torch.Tensor | None  # [B, K, T], None when the latent was not quantized
    semantic: torch.Tensor | None  # [B, D, T], the first codebook's output (straight through)


def forward_train(
    codec: Codec,
    pcm: torch.Tensor,
    training: CodebookTraining | None,
    quantize_probability: float,
    quantize: bool = True,
) -> Reconstruction:
    """pcm [B, 1, samples] (whole frames) -> the reconstruction, and what the losses need.

    The streaming graph of `Codec.encode`/`decode`, with the training quantizer in the middle
    (in fp32 under autocast: nearest-centroid search and the EMA need the precision). With
    `quantize` False the latent passes unquantized (no codes, no commitment loss).
    """
    latent = codec.latent(pcm)
    if not quantize:
        y = codec.upsample(latent)
        y = codec.decoder_transformer(y.transpose(1, 2)).transpose(1, 2)
        return Reconstruction(codec.decoder(y).float(), latent.new_zeros(()), None, None)
    with torch.autocast(latent.device.type, enabled=False):  # distances and EMA in fp32
        quantized, codes, commitment, semantic = codec.quantizer.forward_train(
            latent, codec.num_codebooks, training
        )
    if quantize_probability < 1.0:
        keep = torch.rand(latent.shape[0], 1, 1, device=latent.device) < quantize_probability
        quantized = torch.where(keep, quantized, latent)
    y = codec.upsample(quantized)
    y = codec.decoder_transformer(y.transpose(1, 2)).transpose(1, 2)
    return Reconstruction(codec.decoder(y).float(), commitment, codes, semantic)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="training dialogues folder")
    parser.add_argument("--config", choices=sorted(PRESETS), default="demo", help="codec shape")
    loop.add_loop_arguments(parser, batch_size=32)
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    parser.add_argument("--warmup", type=int, default=500, metavar="STEPS")
    parser.add_argument("--segment", type=float, default=1.2, help="seconds per example")
    parser.add_argument("--max-hours", type=float, default=3.0, help="audio to load")
    parser.add_argument("--quantize-probability", type=float, default=0.5)
    parser.add_argument(
        "--codebook-decay",
        type=float,
        default=0.95,
        help="EMA decay of the codebooks (Kyutai's 0.99 suits its large batches; with 480 "
        "vectors a step for 1024 codes, centroids must follow the encoder faster)",
    )
    parser.add_argument(
        "--vq-start",
        type=int,
        default=300,
        metavar="STEPS",
        help="train as a plain autoencoder for this many steps, then initialise the codebooks "
        "by k-means on the latents it has learnt (on a random encoder's latents they collapse "
        "to a few live codes)",
    )
    parser.add_argument(
        "--decoder-only",
        type=Path,
        metavar="CODEC_RUN",
        help="go on training only the decoder side of a trained codec run (after the codes: "
        "upsampling, decoder transformer and SEANet decoder, the quantizer's output "
        "projections), always from quantized latents as at inference; its encoder and "
        "codebooks stay as they are, so every code, and any LM trained on them, is unchanged",
    )
    parser.add_argument(
        "--init",
        type=Path,
        metavar="CODEC_RUN",
        help="start from a trained codec run's weights and codebooks (quantizing from the first "
        "step), e.g. to add --phoneme-weight to a codec that has learnt to reconstruct",
    )
    parser.add_argument(
        "--phoneme-weight",
        type=float,
        default=0.0,
        help="weight of the loss that teaches the first codebook the phonemes being said "
        "(0: off). The table of phonemes is built with espeak-ng from the dialogues' words and "
        "kept in the run folder",
    )
    parser.add_argument(
        "--teacher",
        type=Path,
        metavar="TEACHER_RUN",
        help="a `train teacher` run: the first codebook's output learns its hidden states "
        "(Mimi's semantic distillation, with this recogniser in WavLM's place)",
    )
    parser.add_argument("--distill-weight", type=float, default=1.0, help="with --teacher")
    parser.add_argument("--waveform-weight", type=float, default=0.1)
    parser.add_argument("--commitment-weight", type=float, default=0.25)
    parser.add_argument(
        "--eval-data",
        type=Path,
        help="held-out dialogues: every --eval-every steps, STOI of their user channels and the "
        "codes each codebook uses go to the log",
    )


def run(args: argparse.Namespace) -> int:
    train_codec(args)
    print(f"codec: {args.out / WEIGHTS}")
    return 0


def train_codec(args: argparse.Namespace) -> int:
    """Train (or continue) a codec run; returns the steps done."""
    device = loop.device_from(args.device)
    options = loop.loop_options(args, LEARNING_OPTIONS)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    generator = loop.seed_everything(args.seed)
    if args.decoder_only is not None and (
        args.init is not None or args.phoneme_weight > 0 or args.teacher is not None
    ):
        raise ConfigError(
            "--decoder-only keeps every code: it takes no --init, --phoneme-weight or --teacher"
        )
    if args.decoder_only is not None:
        codec = load_trained_codec(args.decoder_only, device)
    elif args.init is not None:
        codec = load_trained_codec(args.init, device)
    else:
        codec = Codec(PRESETS[args.config]()).to(device)
    table = None
    if args.phoneme_weight > 0:
        words = (a for wav in read_manifest(args.data) for a in _alignments(wav))
        table = load_or_build(out, words, options.progress)
    teacher: Teacher | None = None
    if args.teacher is not None:
        teacher = load_teacher(args.teacher, device)
    trainee = (
        Trainee(
            codec,
            None if table is None else table.classes,
            None if teacher is None else teacher.config.dim,
        )
        .to(device)
        .train()
    )
    if args.decoder_only is not None:
        trainable = freeze_encoder_side(codec)
    else:
        trainable = list(trainee.parameters())
    config = codec.config
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, betas=(0.8, 0.99))
    start = 0
    if (out / loop.CHECKPOINT).is_file():
        start, extra = loop.load_checkpoint(out / loop.CHECKPOINT, trainee, optimizer, generator)
        loop.resume(options, extra, out, start)
        log.info("codec: resuming %s at step %d", out, start)
    data = SpeechSegments(args.data, args.max_hours, config.sample_rate, config.frame_rate, table)
    mel_loss = MultiResolutionMelLoss(config.sample_rate).to(device)
    frames = max(1, round(args.segment * config.frame_rate))
    samples = frames * config.frame_size
    trained = args.decoder_only is not None or args.init is not None  # codebooks ready
    vq = None if args.decoder_only else CodebookTraining(decay=args.codebook_decay)
    quantize_probability = 1.0 if args.decoder_only else args.quantize_probability
    autocast = loop.autocast(device, enabled=not args.no_bf16)
    if args.eval_data is not None:
        held_out = HeldOut(args.eval_data, config.sample_rate, config.frame_rate, table)
        options.evaluate = lambda _step: held_out.figures(trainee, teacher)

    def step(i: int) -> dict[str, float]:
        for group in optimizer.param_groups:
            group["lr"] = loop.learning_rate(i, args.lr, args.warmup, options.schedule_steps)
        crops = data.batch(args.batch_size, samples, generator)
        pcm = crops.pcm.to(device)
        with autocast:
            estimate, commitment, codes, semantic = forward_train(
                codec, pcm, vq, quantize_probability, quantize=trained or i >= args.vq_start
            )
        mel = mel_loss(estimate, pcm)
        waveform = F.l1_loss(estimate, pcm)
        loss = mel + args.waveform_weight * waveform + args.commitment_weight * commitment
        figures = {}
        if trainee.phonemes is not None and semantic is not None and crops.phonemes is not None:
            logits = trainee.phonemes(semantic.transpose(1, 2))
            fit = phoneme_loss(logits, crops.phonemes.to(device))
            loss = loss + args.phoneme_weight * fit.loss
            accuracy = fit.right / fit.speech.clamp(min=1)
            figures = {"phonemes": fit.loss.item(), "phoneme_acc": accuracy.item()}
        if teacher is not None and trainee.distill is not None and semantic is not None:
            with torch.no_grad():
                target = teacher.embed(pcm[:, 0])
            distill = distill_loss(trainee.distill(semantic.transpose(1, 2)), target)
            loss = loss + args.distill_weight * distill
            figures["distill"] = distill.item()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        return {
            "loss": loss.item(),
            "mel": mel.item(),
            "wav": waveform.item(),
            "commit": commitment.item(),
            **figures,
            # the fewest distinct codes any codebook used in this batch: near 1 = dead codes
            "codes_min": 0.0
            if codes is None
            else float(min(len(torch.unique(codes[:, k])) for k in range(codes.shape[1]))),
        }

    def checkpoint(done: int) -> None:
        loop.save_checkpoint(
            out / loop.CHECKPOINT, trainee, optimizer, done, generator, options.checkpoint_extra()
        )
        save_codec(codec, out)

    done = loop.train_loop(step, checkpoint, start, options, out, "codec")
    if options.steps is not None and start >= options.steps:
        save_codec(codec, out)
    return done


DECODER_SIDE = ("upsample.", "decoder_transformer.", "decoder.", "quantizer.rvq_first.output_proj.",
                "quantizer.rvq_rest.output_proj.")  # fmt: skip


def freeze_encoder_side(codec: Codec) -> list[torch.nn.Parameter]:
    """Freeze everything up to and including the codes; returns the parameters after them."""
    trainable = []
    for name, param in codec.named_parameters():
        param.requires_grad_(name.startswith(DECODER_SIDE))
        if param.requires_grad:
            trainable.append(param)
    return trainable


class HeldOut:
    """A fixed handful of held-out user channels, to watch the codec learn: STOI of the
    streaming-equivalent reconstruction, how many codes each codebook uses, and with a phoneme
    table, how well the phoneme head reads the phonemes from the first codebook's codes (on all
    of them, and on the voices held out of training)."""

    def __init__(
        self,
        folder: Path,
        sample_rate: int,
        frame_rate: float,
        phonemes: PhonemeTable | None = None,
        count: int = 8,
        seconds: float = 8.0,
        phoneme_count: int = 48,
    ):
        files = read_manifest(folder)[: max(count, phoneme_count)]
        if not files:
            raise ConfigError(f"--eval-data {folder}: no dialogues")
        n = int(seconds * sample_rate)
        self.channels, self.labels, self.new_voice = [], [], []
        for path in files:
            pcm, meta = read_dialogue(path)
            self.channels.append(pcm[1, :n])
            self.new_voice.append(bool(meta.get("held_out_voice")))
            if phonemes is not None:
                frames = math.ceil(n * frame_rate / sample_rate)
                labels = phonemes.frame_labels(meta["alignments"], USER, frames, frame_rate)
                self.labels.append(labels)
        self.count = count
        self.sample_rate = sample_rate
        self.teacher_states: dict[int, torch.Tensor] = {}  # channel -> the teacher's states

    @torch.no_grad()
    def figures(self, trainee: Trainee, teacher: Teacher | None = None) -> dict[str, Any]:
        codec = trainee.codec
        trainee.eval()
        device = next(codec.parameters()).device
        scores, used = [], None
        hits = {False: [0, 0], True: [0, 0]}  # new voice -> [right, frames]
        cosines: dict[bool, list[float]] = {False: [], True: []}  # new voice -> per channel
        for i, channel in enumerate(self.channels):
            pcm = torch.from_numpy(channel).to(device).view(1, 1, -1)
            codes = codec.encode(pcm)
            if i < self.count:
                decoded = codec.decode(codes)[0, 0, : len(channel)].float().cpu().numpy()
                scores.append(stoi(channel, decoded, self.sample_rate))
                distinct = [set(codes[0, k].tolist()) for k in range(codes.shape[1])]
                used = (
                    distinct
                    if used is None
                    else [a | b for a, b in zip(used, distinct, strict=True)]
                )
            if trainee.phonemes is not None or trainee.distill is not None:
                semantic = codec.quantizer.decode(codes[:, : codec.config.semantic_codebooks])
            if trainee.phonemes is not None and self.labels:
                logits = trainee.phonemes(semantic.transpose(1, 2))
                labels = torch.from_numpy(self.labels[i][None, : logits.shape[1]]).long()
                fit = phoneme_loss(logits, labels.to(device))
                hits[self.new_voice[i]][0] += int(fit.right)
                hits[self.new_voice[i]][1] += int(fit.speech)
            if teacher is not None and trainee.distill is not None:
                if i not in self.teacher_states:  # the teacher is frozen: its states once
                    self.teacher_states[i] = teacher.embed(pcm[:, 0])
                distill = distill_loss(
                    trainee.distill(semantic.transpose(1, 2)), self.teacher_states[i]
                )
                cosines[self.new_voice[i]].append(1 - float(distill))
        trainee.train()
        assert used is not None
        figures: dict[str, Any] = {
            "stoi": round(float(np.mean(scores)), 4),
            "codes_used": [len(u) for u in used],
        }
        if trainee.phonemes is not None:
            right = hits[False][0] + hits[True][0]
            figures["phoneme_acc"] = round(right / max(1, hits[False][1] + hits[True][1]), 4)
            figures["phoneme_acc_new_voice"] = round(hits[True][0] / max(1, hits[True][1]), 4)
        if cosines[False] or cosines[True]:  # how near the codes come to the teacher's states
            figures["distill_cos"] = round(float(np.mean(cosines[False] + cosines[True])), 4)
            figures["distill_cos_new_voice"] = round(float(np.mean(cosines[True] or [0.0])), 4)
        return figures


def save_codec(codec: Codec, folder: Path, dtype: torch.dtype = torch.float32) -> None:
    """codec.safetensors (our key names; `load_codec` reads them) and codec.json."""
    state = {k: v.detach().to("cpu") for k, v in codec.state_dict().items()}
    for key in state:
        if key.endswith("_initialized"):
            state[key] = torch.ones(1)  # a step counter in training; 1 = trained, as Kyutai's
    save_safetensors(state, folder / WEIGHTS, dtype)
    (folder / CONFIG).write_text(json.dumps(asdict(codec.config), indent=1))


def load_trained_codec(folder: str | Path, device: torch.device | str = "cpu") -> Codec:
    """A codec run's (or the assets') weights and config."""
    folder = Path(folder)
    if not (folder / CONFIG).is_file() or not (folder / WEIGHTS).is_file():
        raise ConfigError(f"{folder}: no {WEIGHTS} and {CONFIG} (a codec run folder has both)")
    config = mimi_config_from_dict(json.loads((folder / CONFIG).read_text()))
    return load_codec(folder / WEIGHTS, config, device)
