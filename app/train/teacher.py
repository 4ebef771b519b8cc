"""`antiphon train teacher`: a small speech recogniser whose hidden states the codec's first
codebook learns, as Mimi's first codebook learns WavLM's.

Why: the demo codec's codes did not carry the user's words well enough for the LM to learn
them. A probe told the request's intent (8 classes) from 15,000 training requests: on the
user's codes it reached 97% on training requests and 33% on held-out ones; on log-mel features
of the same audio 86% held-out in training voices (47% in the held-out voice). The codec loses
what a mel spectrogram keeps, so the codec is taught to keep it: this recogniser reads log-mel
and learns the phonemes of every word (CTC on the words' espeak-ng phonemes, no timings
needed), on speed-perturbed speech so that it hears past a voice's pitch and formants; its
hidden states are then the target of the codec's first codebook (`train codec --teacher`).

Shape: log-mel (64 bins, 20 ms hop, each frame normalised over its bins, so the level does
not matter) -> two causal convolutions (25 Hz) -> a causal transformer without positions ->
phonemes + blank. Causal, as the codec's encoder is: what the codec must imitate at a frame
depends only on what it has heard (and 20 ms past the frame's end, the last mel window's
overhang). `Teacher.embed` gives one state per 80 ms codec frame.

A run folder ends with `teacher.safetensors`, `teacher.json` and the phoneme table.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soxr
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from model.bundle import save_safetensors
from model.errors import ConfigError

from . import loop
from .dialogues import ASSISTANT, USER, read_description, read_dialogue, read_manifest
from .features import LogMel, edit_distance
from .phonemes import PhonemeTable, load_or_build

log = logging.getLogger(__name__)

WEIGHTS, CONFIG = "teacher.safetensors", "teacher.json"
SAMPLE_RATE = 24000
HOP = 480  # 20 ms: 4 mel frames per 80 ms codec frame
BLANK = 0  # CTC's blank is the phoneme table's SILENCE id


@dataclass
class TeacherConfig:
    classes: int  # phonemes + blank
    dim: int = 192
    layers: int = 4
    heads: int = 4
    mels: int = 64


class Teacher(torch.nn.Module):
    def __init__(self, config: TeacherConfig) -> None:
        super().__init__()
        self.config = config
        self.mel = LogMel(SAMPLE_RATE, 4 * HOP, config.mels)
        self.norm = torch.nn.LayerNorm(config.mels)
        self.conv1 = torch.nn.Conv1d(config.mels, config.dim, 3)
        self.conv2 = torch.nn.Conv1d(config.dim, config.dim, 4, stride=2)
        layer = torch.nn.TransformerEncoderLayer(
            config.dim, config.heads, 2 * config.dim, dropout=0.1, batch_first=True,
            norm_first=True,
        )  # fmt: skip
        self.transformer = torch.nn.TransformerEncoder(
            layer, config.layers, enable_nested_tensor=False
        )
        self.out = torch.nn.Linear(config.dim, config.classes)

    def hidden(
        self, pcm: torch.Tensor, masks: int = 0, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """pcm [B, samples] -> states [B, frames at 25 Hz, dim], each from the audio before it;
        with `masks`, training only, that many bands and stretches of each crop's features
        hidden (`spec_augment`)."""
        mel = self.mel(pcm.float())[..., : pcm.shape[-1] // HOP]  # [B, mels, T50]
        x = self.norm(mel.transpose(1, 2)).transpose(1, 2)
        if masks:
            x = spec_augment(x, masks, generator)
        x = F.gelu(self.conv1(F.pad(x, (2, 0))))
        x = F.gelu(self.conv2(F.pad(x, (2, 0))))  # [B, dim, T25]
        x = x.transpose(1, 2)
        mask = torch.nn.Transformer.generate_square_subsequent_mask(x.shape[1], device=x.device)
        return self.transformer(x, mask=mask, is_causal=True)

    def forward(
        self, pcm: torch.Tensor, masks: int = 0, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Phoneme logits [B, T25, classes]."""
        return self.out(self.hidden(pcm, masks, generator))

    def embed(self, pcm: torch.Tensor) -> torch.Tensor:
        """One state per 80 ms frame [B, frames, dim]: the mean of the frame's two 25 Hz ones."""
        h = self.hidden(pcm)
        frames = h.shape[1] // 2
        return h[:, : 2 * frames].reshape(h.shape[0], frames, 2, -1).mean(2)


# What a resumed run must be given as it started (`loop.resume`).
LEARNING_OPTIONS = (
    "lr", "warmup", "batch_size", "seconds", "speed_perturb", "spec_augment", "dialogues",
)  # fmt: skip

MASK_BINS = 12  # of 64 mel bands: a formant's worth
MASK_FRAMES = 10  # of 50 a second: 0.2 s, about a syllable


def spec_augment(x: torch.Tensor, masks: int, generator: torch.Generator | None) -> torch.Tensor:
    """SpecAugment's masks on features [B, mels, T]: in each crop, `masks` bands of up to
    MASK_BINS mel bins and `masks` stretches of up to MASK_FRAMES frames (at most a tenth of the
    batch's frames, padding included: a short crop's stretch may fall in its padding) set to
    zero, the normalised features' mean. A recogniser that cannot lean on one band or one
    instant learns what a sound is from the rest of it, which is what another speaker leaves
    the same."""
    batch, mels, frames = x.shape
    keep = torch.ones_like(x)
    for b in range(batch):
        for _ in range(masks):
            width, start = _span(MASK_BINS, mels, generator)
            keep[b, start : start + width, :] = 0
            width, start = _span(min(MASK_FRAMES, frames // 10), frames, generator)
            keep[b, :, start : start + width] = 0
    return x * keep


def _span(most: int, length: int, generator: torch.Generator | None) -> tuple[int, int]:
    width = int(torch.randint(most + 1, (1,), generator=generator)) if most > 0 else 0
    start = int(torch.randint(max(1, length - width + 1), (1,), generator=generator))
    return width, start


def save_teacher(teacher: Teacher, folder: Path) -> None:
    save_safetensors(teacher.state_dict(), folder / WEIGHTS, torch.float32)  # (mel: buffers)
    (folder / CONFIG).write_text(json.dumps(asdict(teacher.config), indent=1))


def load_teacher(folder: Path, device: torch.device | str = "cpu") -> Teacher:
    """A teacher run's recogniser, frozen (eval mode, no gradients)."""
    if not (folder / WEIGHTS).is_file() or not (folder / CONFIG).is_file():
        raise ConfigError(
            f"--teacher {folder}: no {WEIGHTS} and {CONFIG} (`antiphon train teacher --out "
            f"{folder}` writes them)"
        )
    teacher = Teacher(TeacherConfig(**json.loads((folder / CONFIG).read_text())))
    try:
        teacher.load_state_dict(load_file(folder / WEIGHTS))
    except RuntimeError as error:
        raise ConfigError(
            f"--teacher {folder}: its weights do not fit its {CONFIG} (another antiphon, or "
            f"a damaged file): {str(error).splitlines()[-1].strip()}"
        ) from error
    teacher.requires_grad_(False)
    return teacher.to(device).eval()


# --- data: runs of whole words, with their phonemes ---------------------------------------------


Word = tuple[float, float, list[int]]  # start, end (seconds), phoneme ids


def speaker_words(alignments: list, speaker: str, table: PhonemeTable) -> list[Word]:
    return sorted(
        (start, end, [p for p in table.ids(text) if p > 0])
        for text, (start, end), who in alignments
        if who == speaker and end > start
    )


def word_run(
    channel: np.ndarray, words: list[Word], first: int, seconds: float, speed: float = 1.0
) -> tuple[np.ndarray, list[int]]:
    """The audio (float32) of the words from `first` on, as many as fit in `seconds`, with a
    little of the silence around them (never a neighbour's sound), and their phonemes."""
    last = first
    while last + 1 < len(words) and words[last + 1][1] - words[first][0] <= seconds:
        last += 1
    before = words[first - 1][1] if first > 0 else 0.0
    after = words[last + 1][0] if last + 1 < len(words) else len(channel) / SAMPLE_RATE
    start = max(words[first][0] - 0.15, (before + words[first][0]) / 2)
    end = min(words[last][1] + 0.15, (words[last][1] + after) / 2)
    scale = 32767 if channel.dtype == np.int16 else 1
    pcm = channel[int(start * SAMPLE_RATE) : int(end * SAMPLE_RATE)].astype(np.float32) / scale
    if speed != 1.0:  # faster and higher (or slower and lower): another vocal tract
        pcm = soxr.resample(pcm, SAMPLE_RATE, SAMPLE_RATE / speed).astype(np.float32)
    return pcm, [p for w in words[first : last + 1] for p in w[2]]


class WordRuns:
    """Crops of one channel holding a run of whole words (up to `seconds`), each with the
    phonemes of its words; the user's channel twice as often as the assistant's (the
    assistant has one voice, the users many)."""

    def __init__(self, folder: Path, table: PhonemeTable, max_dialogues: int | None = None):
        self.channels: list[np.ndarray] = []  # int16
        self.words: list[list[Word]] = []  # per channel
        self.weights: list[float] = []
        for wav in read_manifest(folder)[:max_dialogues]:
            pcm, meta = read_dialogue(wav)
            for channel, speaker in zip(pcm, (ASSISTANT, USER), strict=True):
                words = speaker_words(meta["alignments"], speaker, table)
                if words:
                    self.channels.append((channel * 32767).astype(np.int16))
                    self.words.append(words)
                    self.weights.append(2.0 if speaker == USER else 1.0)
        if not self.channels:
            raise ConfigError(f"{folder}: no dialogues with aligned words")
        self.weights_t = torch.tensor(self.weights)

    def batch(
        self, size: int, seconds: float, perturb: float, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
        """pcm [size, samples] (zero-padded), their lengths, their phoneme sequences."""
        crops, targets = [], []
        for _ in range(size):
            c = int(torch.multinomial(self.weights_t, 1, generator=generator))
            first = int(torch.randint(len(self.words[c]), (1,), generator=generator))
            speed = 1.0 + perturb * (2 * float(torch.rand(1, generator=generator)) - 1)
            pcm, phones = word_run(self.channels[c], self.words[c], first, seconds, speed)
            crops.append(pcm)
            targets.append(phones)
        samples = max(len(p) for p in crops)
        out = np.zeros((size, samples), dtype=np.float32)
        for i, pcm in enumerate(crops):
            out[i, : len(pcm)] = pcm
        lengths = torch.tensor([len(p) for p in crops])
        return torch.from_numpy(out), lengths, targets


def output_lengths(samples: torch.Tensor) -> torch.Tensor:
    """25 Hz frames the teacher gives for crops of these many samples."""
    mel = samples // HOP
    return (mel - 2) // 2 + 1


def ctc_loss(logits: torch.Tensor, lengths: torch.Tensor, targets: list[list[int]]) -> torch.Tensor:
    frames = output_lengths(lengths).clamp(max=logits.shape[1])
    flat = torch.tensor([p for t in targets for p in t], dtype=torch.long)
    return F.ctc_loss(
        logits.float().log_softmax(-1).transpose(0, 1), flat, frames,
        torch.tensor([len(t) for t in targets]), blank=BLANK, zero_infinity=True,
    )  # fmt: skip


def greedy(logits: torch.Tensor, frames: int) -> list[int]:
    """CTC's best path: repeats merged, blanks dropped."""
    best = logits[:frames].argmax(-1).tolist()
    return [p for i, p in enumerate(best) if p != BLANK and (i == 0 or p != best[i - 1])]


class HeldOutPhonemes:
    """Phoneme error rate of the teacher on held-out users' requests, whole, in training voices
    and in the held-out voice."""

    def __init__(self, folder: Path, table: PhonemeTable, count: int = 48):
        self.items: list[tuple[np.ndarray, list[int], bool]] = []
        for wav in read_manifest(folder)[:count]:
            pcm, meta = read_dialogue(wav)
            words = speaker_words(meta["alignments"], USER, table)
            first = 0
            while first < len(words):  # one item per stretch of speech (gaps under 0.4 s)
                last = first
                while last + 1 < len(words) and words[last + 1][0] - words[last][1] < 0.4:
                    last += 1
                span = words[last][1] - words[first][0]
                crop, phones = word_run(pcm[1], words, first, span)
                self.items.append((crop, phones, bool(meta.get("held_out_voice"))))
                first = last + 1

    @torch.no_grad()
    def figures(self, teacher: Teacher) -> dict[str, Any]:
        teacher.eval()
        errors = {False: [0, 0], True: [0, 0]}
        for pcm, phones, new_voice in self.items:
            logits = teacher(torch.from_numpy(pcm)[None])[0]
            frames = int(output_lengths(torch.tensor(len(pcm))))
            errors[new_voice][0] += edit_distance(greedy(logits, frames), phones)
            errors[new_voice][1] += len(phones)
        teacher.train()
        return {
            "per": round(
                sum(e for e, _ in errors.values()) / max(1, sum(n for _, n in errors.values())), 4
            ),
            "per_training_voices": round(errors[False][0] / max(1, errors[False][1]), 4),
            "per_new_voice": round(errors[True][0] / max(1, errors[True][1]), 4),
        }


# --- the command ----------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="training dialogues folder")
    loop.add_loop_arguments(parser, batch_size=32)
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    parser.add_argument("--warmup", type=int, default=300, metavar="STEPS")
    parser.add_argument("--seconds", type=float, default=3.0, help="longest run of words a crop")
    parser.add_argument(
        "--speed-perturb",
        type=float,
        default=0.15,
        help="resample each crop by a random factor in [1 - x, 1 + x]: pitch, formants and "
        "tempo move together, as between speakers (0: off)",
    )
    parser.add_argument(
        "--spec-augment",
        type=int,
        default=2,
        metavar="MASKS",
        help=f"hide MASKS bands of up to {MASK_BINS} mel bins and MASKS stretches of up to "
        f"{MASK_FRAMES * 20} ms of each crop's features (SpecAugment; 0: off)",
    )
    parser.add_argument("--dialogues", type=int, help="load only the first N dialogues")
    parser.add_argument("--dim", type=int, default=TeacherConfig.dim)
    parser.add_argument("--layers", type=int, default=TeacherConfig.layers)
    parser.add_argument("--eval-data", type=Path, help="held-out dialogues: phoneme error rate")
    parser.add_argument(
        "--eval-count",
        type=int,
        default=48,
        metavar="N",
        help="the first N held-out dialogues (default 48); run a finished teacher again with "
        "a larger N for its figures on more of them",
    )


def run(args: argparse.Namespace) -> int:
    train_teacher(args)
    print(f"teacher: {args.out / WEIGHTS}")
    return 0


def train_teacher(args: argparse.Namespace) -> int:
    device = loop.device_from(args.device)
    options = loop.loop_options(args, LEARNING_OPTIONS)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    generator = loop.seed_everything(args.seed)
    alignments = (
        a for wav in read_manifest(args.data)[: args.dialogues]
        for a in read_description(wav)["alignments"]
    )  # fmt: skip
    table = load_or_build(out, alignments, options.progress)
    teacher = Teacher(TeacherConfig(table.classes, args.dim, args.layers)).to(device).train()
    optimizer = torch.optim.AdamW(teacher.parameters(), lr=args.lr, betas=(0.9, 0.98))
    start = 0
    if (out / loop.CHECKPOINT).is_file():
        start, extra = loop.load_checkpoint(out / loop.CHECKPOINT, teacher, optimizer, generator)
        loop.resume(options, extra, out, start)
        log.info("teacher: resuming %s at step %d", out, start)
    data = WordRuns(args.data, table, args.dialogues)
    if args.eval_data is not None:
        held_out = HeldOutPhonemes(args.eval_data, table, args.eval_count)
        options.evaluate = lambda _step: held_out.figures(teacher)

    def step(i: int) -> dict[str, float]:
        for group in optimizer.param_groups:
            group["lr"] = loop.learning_rate(i, args.lr, args.warmup, options.schedule_steps)
        pcm, lengths, targets = data.batch(
            args.batch_size, args.seconds, args.speed_perturb, generator
        )
        loss = ctc_loss(teacher(pcm.to(device), args.spec_augment, generator), lengths, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(teacher.parameters(), 1.0)
        optimizer.step()
        return {"loss": loss.item(), "seconds": float(lengths.float().mean()) / SAMPLE_RATE}

    def checkpoint(done: int) -> None:
        loop.save_checkpoint(
            out / loop.CHECKPOINT, teacher, optimizer, done, generator, options.checkpoint_extra()
        )
        save_teacher(teacher, out)

    done = loop.train_loop(step, checkpoint, start, options, out, "teacher")
    if options.steps is not None and start >= options.steps:
        save_teacher(teacher, out)
        if args.eval_data is not None:  # a finished teacher: its figures, on --eval-count
            figures = held_out.figures(teacher)
            log.info("teacher: held-out at step %d, %d dialogues: %s", start, args.eval_count,
                     figures)  # fmt: skip
            print(f"held-out phoneme error rate, {args.eval_count} dialogues: {figures}")
    return done
