"""`antiphon train codec`: the Mimi-architecture codec on speech from the dialogues.

Losses: multi-resolution log-mel L1 + a little waveform L1 + the VQ commitment loss; the
gradient passes the quantizer straight through, and codebooks learn by EMA into Kyutai's
`embedding_sum` / `cluster_usage` layout (`model.quantizer`), so the result loads with
`model.checkpoint.load_codec`. As in Mimi's training, the latent is quantized for only part of
each batch (`--quantize-probability`), which helps the decoder. No adversarial losses and no
semantic distillation: the demo's budget is minutes on one GPU.

A run folder ends with `codec.safetensors` and `codec.json` (the MimiConfig).
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

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
from .dialogues import read_dialogue, read_manifest
from .features import MultiResolutionMelLoss
from .stoi import stoi

log = logging.getLogger(__name__)

WEIGHTS, CONFIG = "codec.safetensors", "codec.json"


PRESETS = {"demo": demo_mimi, "tiny": lambda: tiny_mimi(num_codebooks=4)}


class SpeechSegments:
    """Random fixed-length crops with speech in them, from every channel of the dialogues."""

    def __init__(self, folder: str | Path, max_hours: float, sample_rate: int) -> None:
        self.channels: list[np.ndarray] = []  # int16, to halve the memory
        total = 0
        for wav in read_manifest(folder):
            pcm, _ = read_dialogue(wav)
            for channel in pcm:
                self.channels.append((channel * 32767).astype(np.int16))
                total += len(channel)
            if total > max_hours * 3600 * sample_rate:
                break
        if not self.channels:
            raise ConfigError(f"{folder}: no dialogues (generate them with `train data`)")
        self.lengths = torch.tensor([len(c) for c in self.channels], dtype=torch.float64)
        log.info("codec data: %.2f h of channels", total / sample_rate / 3600)

    def batch(self, size: int, samples: int, generator: torch.Generator) -> torch.Tensor:
        """[size, 1, samples] float32; a crop that is nearly silent is drawn again (5 tries)."""
        out = np.zeros((size, 1, samples), dtype=np.float32)
        for i in range(size):
            for _ in range(5):
                c = int(torch.multinomial(self.lengths, 1, generator=generator))
                channel = self.channels[c]
                start = int(
                    torch.randint(0, max(1, len(channel) - samples), (1,), generator=generator)
                )
                crop = channel[start : start + samples].astype(np.float32) / 32767
                if np.sqrt(np.mean(crop**2)) > 3e-3:
                    break
            out[i, 0, : len(crop)] = crop
        return torch.from_numpy(out)


def forward_train(
    codec: Codec,
    pcm: torch.Tensor,
    training: CodebookTraining | None,
    quantize_probability: float,
    quantize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """pcm [B, 1, samples] (whole frames) -> (reconstruction, commitment loss, codes [B, K, T]).

    The streaming graph of `Codec.encode`/`decode`, with the training quantizer in the middle
    (in fp32 under autocast: nearest-centroid search and the EMA need the precision). With
    `quantize` False the latent passes unquantized (no codes, no commitment loss).
    """
    latent = codec.latent(pcm)
    if not quantize:
        y = codec.upsample(latent)
        y = codec.decoder_transformer(y.transpose(1, 2)).transpose(1, 2)
        return codec.decoder(y).float(), latent.new_zeros(()), None
    with torch.autocast(latent.device.type, enabled=False):  # distances and EMA in fp32
        quantized, codes, commitment = codec.quantizer.forward_train(
            latent, codec.num_codebooks, training
        )
    if quantize_probability < 1.0:
        keep = torch.rand(latent.shape[0], 1, 1, device=latent.device) < quantize_probability
        quantized = torch.where(keep, quantized, latent)
    y = codec.upsample(quantized)
    y = codec.decoder_transformer(y.transpose(1, 2)).transpose(1, 2)
    return codec.decoder(y).float(), commitment, codes


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
    options = loop.loop_options(args)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    generator = loop.seed_everything(args.seed)
    if args.decoder_only is not None:
        codec = load_trained_codec(args.decoder_only, device).train()
        trainable = freeze_encoder_side(codec)
    else:
        codec = Codec(PRESETS[args.config]()).to(device).train()
        trainable = list(codec.parameters())
    config = codec.config
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, betas=(0.8, 0.99))
    start = 0
    if (out / loop.CHECKPOINT).is_file():
        start, extra = loop.load_checkpoint(out / loop.CHECKPOINT, codec, optimizer, generator)
        loop.resume_steps(options, extra)
        log.info("codec: resuming %s at step %d", out, start)
    data = SpeechSegments(args.data, args.max_hours, config.sample_rate)
    mel_loss = MultiResolutionMelLoss(config.sample_rate).to(device)
    frames = max(1, round(args.segment * config.frame_rate))
    samples = frames * config.frame_size
    vq = None if args.decoder_only else CodebookTraining(decay=args.codebook_decay)
    quantize_probability = 1.0 if args.decoder_only else args.quantize_probability
    autocast = loop.autocast(device, enabled=not args.no_bf16)
    if args.eval_data is not None:
        held_out = HeldOut(args.eval_data, config.sample_rate)
        options.evaluate = lambda _step: held_out.figures(codec)

    def step(i: int) -> dict[str, float]:
        for group in optimizer.param_groups:
            group["lr"] = loop.learning_rate(i, args.lr, args.warmup, options.schedule_steps)
        pcm = data.batch(args.batch_size, samples, generator).to(device)
        with autocast:
            estimate, commitment, codes = forward_train(
                codec,
                pcm,
                vq,
                quantize_probability,
                quantize=args.decoder_only is not None or i >= args.vq_start,
            )
        mel = mel_loss(estimate, pcm)
        waveform = F.l1_loss(estimate, pcm)
        loss = mel + args.waveform_weight * waveform + args.commitment_weight * commitment
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        return {
            "loss": loss.item(),
            "mel": mel.item(),
            "wav": waveform.item(),
            "commit": commitment.item(),
            # the fewest distinct codes any codebook used in this batch: near 1 = dead codes
            "codes_min": 0.0
            if codes is None
            else float(min(len(torch.unique(codes[:, k])) for k in range(codes.shape[1]))),
        }

    def checkpoint(done: int) -> None:
        extra = {"steps": options.steps}
        loop.save_checkpoint(out / loop.CHECKPOINT, codec, optimizer, done, generator, extra)
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
    streaming-equivalent reconstruction and how many codes each codebook uses."""

    def __init__(self, folder: Path, sample_rate: int, count: int = 8, seconds: float = 8.0):
        files = read_manifest(folder)[:count]
        if not files:
            raise ConfigError(f"--eval-data {folder}: no dialogues")
        n = int(seconds * sample_rate)
        self.channels = [read_dialogue(path)[0][1, :n] for path in files]
        self.sample_rate = sample_rate

    @torch.no_grad()
    def figures(self, codec: Codec) -> dict[str, Any]:
        codec.eval()
        device = next(codec.parameters()).device
        scores, used = [], None
        for channel in self.channels:
            pcm = torch.from_numpy(channel).to(device).view(1, 1, -1)
            codes = codec.encode(pcm)
            decoded = codec.decode(codes)[0, 0, : len(channel)].float().cpu().numpy()
            scores.append(stoi(channel, decoded, self.sample_rate))
            distinct = [set(codes[0, k].tolist()) for k in range(codes.shape[1])]
            used = (
                distinct if used is None else [a | b for a, b in zip(used, distinct, strict=True)]
            )
        codec.train()
        assert used is not None
        return {"stoi": round(float(np.mean(scores)), 4), "codes_used": [len(u) for u in used]}


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
    config = mimi_config_from_dict(json.loads((folder / CONFIG).read_text()))
    return load_codec(folder / WEIGHTS, config, device)
