"""`antiphon train lm`: the Moshi-architecture LM on the codec's tokens and the aligned text.

Data: every training dialogue becomes streams [1 + 2K, frames] at 12.5 Hz: the inner
monologue (`app.dialogues.text_tokens`), the assistant's K codes, the user's K codes (both
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

from model.codec import Codec
from model.config import LMConfig, TransformerConfig, tiny_lm
from model.errors import ConfigError
from model.lm import LM, delay_streams, undelay
from model.tokenizer import TextTokenizer
from model.transformer import Transformer, TransformerLayer, apply_rope

from . import train
from .dialogues import read_dialogue, read_manifest, text_tokens
from .export import lm_config_to_kyutai, save_safetensors
from .train_codec import load_trained_codec
from .train_tokenizer import TOKENIZER_FILE

log = logging.getLogger(__name__)

WEIGHTS, CONFIG, TOKENS = "lm.safetensors", "config.json", "tokens.npz"
IGNORE = -1  # target id of positions without a target (also "no input" for the embeddings)


def demo_lm(text_card: int, card: int = 1024, codebooks: int = 8) -> LMConfig:
    """The bundled demo LM: about 11 M parameters (22 MB in bf16); with the demo codec,
    encode + LM step + decode takes about 22 ms per frame on 2 CPU cores (docs/demo-model.md).

    The depth transformer shares weights between acoustic codebooks (schedule 0, 1, 2, 2, ...):
    a third of the parameters of one set per codebook, at the same speed."""
    delays = (0,) + (0,) + (1,) * (codebooks - 1) + (0,) + (1,) * (codebooks - 1)
    return LMConfig(
        temporal=TransformerConfig(
            dim=256, num_heads=8, num_layers=4, ffn_dim=int(4.125 * 256), context=250
        ),
        depth=TransformerConfig(
            dim=128,
            num_heads=4,
            num_layers=2,
            ffn_dim=int(4.125 * 128),
            positions="none",
            weights_per_step=codebooks,
            weights_schedule=(0, 1) + (2,) * (codebooks - 2),
        ),
        text_card=text_card,
        card=card,
        n_q=2 * codebooks,
        dep_q=codebooks,
        delays=delays,
    )


def tiny_demo_lm(text_card: int, card: int, codebooks: int) -> LMConfig:
    return tiny_lm(dep_q=codebooks, n_q=2 * codebooks, text_card=text_card, card=card)


PRESETS = {"demo": demo_lm, "tiny": tiny_demo_lm}


# --- a differentiable forward pass ---------------------------------------------------------------


def _depth_layer(layer: TransformerLayer, x: torch.Tensor, sets: list[int]) -> torch.Tensor:
    """One depth layer over all positions x [N, S, D] at once, position s using weight set
    sets[s]: the numbers of `TransformerLayer.step` run position by position, without writing
    into a KV cache (which autograd cannot follow)."""
    config = layer.config
    N, S, D = x.shape
    H, Dh = config.num_heads, config.head_dim
    attention = layer.self_attn
    h = layer.norm1(x)
    qkv = torch.stack([attention.in_projs[w](h[:, s]) for s, w in enumerate(sets)], dim=1)
    q, k, v = qkv.view(N, S, 3, H, Dh).permute(2, 0, 3, 1, 4).unbind(0)  # each [N, H, S, Dh]
    if config.positions == "rope":
        positions = torch.arange(S, device=x.device).expand(N, S)
        q, k = (
            apply_rope(q, positions, config.max_period),
            apply_rope(k, positions, config.max_period),
        )
    attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    attended = attended.transpose(1, 2).reshape(N, S, D)
    out = torch.stack([attention.out_projs[w](attended[:, s]) for s, w in enumerate(sets)], dim=1)
    x = x + layer.layer_scale_1(out)
    h = layer.norm2(x)
    update = torch.cat([layer._ffn(h[:, s : s + 1], w) for s, w in enumerate(sets)], dim=1)
    return x + layer.layer_scale_2(update)


def depth_forward_train(depformer: Transformer, x: torch.Tensor) -> torch.Tensor:
    """x [N, dep_q, D] -> [N, dep_q, D], equal to `depformer(x)` but differentiable."""
    sets = [depformer.config.weight_index(s) for s in range(x.shape[1])]
    for layer in depformer.layers:
        x = _depth_layer(layer, x, sets)  # type: ignore[arg-type]
    return x


def forward_train(lm: LM, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`LM.forward` (teacher forcing) with a differentiable depth transformer: codes
    [B, streams, T] -> text logits [B, T, text_card], audio logits [B, dep_q, T, card]."""
    config = lm.config
    B, S, T = codes.shape
    initial = torch.full((B, S, 1), config.audio_initial_id, dtype=codes.dtype, device=codes.device)
    initial[:, 0] = config.text_initial_id
    sequence = torch.cat([initial, delay_streams(codes, config.delays, initial)], dim=2)
    temporal_out = lm.out_norm(lm.transformer(lm._temporal_input(sequence[:, :, :-1])))
    text_logits = lm.text_linear(temporal_out)  # [B, T, text_card]
    targets = sequence[:, :, 1:]
    depth_in = torch.stack(
        [lm._depth_input(k, temporal_out, targets[:, k]) for k in range(config.dep_q)], dim=2
    )  # [B, T, dep_q, depth_dim]
    depth_out = depth_forward_train(lm.depformer, depth_in.view(B * T, config.dep_q, -1))
    audio_logits = torch.stack(
        [lm.linears[k](depth_out[:, k]).view(B, T, -1) for k in range(config.dep_q)], dim=1
    )
    audio_logits = undelay(audio_logits, config.delays[1 : config.dep_q + 1])
    text_logits = undelay(text_logits[:, None], config.delays[:1])[:, 0]
    return text_logits, audio_logits


def lm_loss(
    lm: LM,
    codes: torch.Tensor,
    pad_weight: float = 0.5,
    first_codebook_weight: float = 10.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Moshi's training loss on codes [B, streams, T] (IGNORE where there is no token)."""
    config = lm.config
    text_logits, audio_logits = forward_train(lm, codes)
    text_target = codes[:, 0]
    text_ce = F.cross_entropy(
        text_logits.flatten(0, 1).float(),
        text_target.flatten(),
        ignore_index=IGNORE,
        reduction="none",
    )
    weight = torch.where(text_target.flatten() == config.text_padding_id, pad_weight, 1.0)
    weight = weight * (text_target.flatten() != IGNORE)
    text_loss = (text_ce * weight).sum() / weight.sum().clamp(min=1)

    audio_target = codes[:, 1 : config.dep_q + 1].clone()  # [B, dep_q, T]
    missing = torch.isnan(audio_logits[..., 0])  # the ends the delays push out
    audio_target[missing] = IGNORE
    audio_logits = torch.nan_to_num(audio_logits, nan=0.0)
    per_codebook = []
    for k in range(config.dep_q):
        per_codebook.append(
            F.cross_entropy(
                audio_logits[:, k].flatten(0, 1).float(),
                audio_target[:, k].flatten(),
                ignore_index=IGNORE,
            )
        )
    weights = torch.tensor([first_codebook_weight] + [1.0] * (config.dep_q - 1))
    audio_loss = (torch.stack(per_codebook) * weights.to(text_loss)).sum() / weights.sum()
    with torch.no_grad():
        spoken = (text_target != IGNORE) & (text_target != config.text_padding_id)
        hits = (text_logits.argmax(-1) == text_target) & spoken
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
    batch: int = 16,
    progress: bool = True,
) -> list[np.ndarray]:
    """Each dialogue as int16 [1 + 2 * num_codebooks, frames]: text, assistant, user."""
    codec = codec.to(device).eval()
    frame_rate, frame_size = codec.config.frame_rate, codec.frame_size
    files = read_manifest(folder)
    out: list[np.ndarray] = []
    for first in tqdm(range(0, len(files), batch), desc="encoding", disable=not progress):
        loaded = [read_dialogue(path) for path in files[first : first + batch]]
        frames = [math.ceil(pcm.shape[1] / frame_size) for pcm, _ in loaded]
        stereo = np.zeros((len(loaded), 2, max(frames) * frame_size), dtype=np.float32)
        for i, (pcm, _) in enumerate(loaded):
            stereo[i, :, : pcm.shape[1]] = pcm
        pcm_batch = torch.from_numpy(stereo).to(device).view(-1, 1, stereo.shape[-1])
        # [2B, K, frames]; the codec is causal, so the zero padding changes no earlier frame
        encoded = codec.encode(pcm_batch)[:, :num_codebooks]
        codes = encoded.reshape(len(loaded), 2 * num_codebooks, -1).cpu().numpy()
        for i, ((_, description), n) in enumerate(zip(loaded, frames, strict=True)):
            text = text_tokens(description["alignments"], tokenizer.encode, n, frame_rate)
            out.append(np.concatenate([np.array(text)[None], codes[i, :, :n]]).astype(np.int16))
    return out


def load_or_encode(
    args: argparse.Namespace, tokenizer: TextTokenizer, num_codebooks: int, device: torch.device
) -> list[np.ndarray]:
    """The cached token streams of the run, encoded now if missing or stale."""
    cache = args.out / TOKENS
    fingerprint = _fingerprint(
        args.codec / "codec.safetensors", tokenizer.path, Path(args.data) / "manifest.jsonl"
    )
    if cache.is_file():
        stored = np.load(cache)
        if str(stored["fingerprint"]) == fingerprint:
            lengths = stored["lengths"]
            return np.split(stored["tokens"], np.cumsum(lengths)[:-1], axis=1)
        log.info("%s is stale: encoding again", cache)
    codec = load_trained_codec(args.codec, device)
    streams = encode_dialogues(args.data, codec, tokenizer, num_codebooks, device)
    np.savez(
        cache,
        tokens=np.concatenate(streams, axis=1),
        lengths=np.array([s.shape[1] for s in streams]),
        fingerprint=np.array(fingerprint),
    )
    return streams


def sample_windows(
    streams: list[np.ndarray], batch: int, frames: int, generator: torch.Generator
) -> torch.Tensor:
    """[batch, streams, frames] int64 windows, IGNORE past a dialogue's end."""
    out = np.full((batch, streams[0].shape[0], frames), IGNORE, dtype=np.int64)
    for i in range(batch):
        tokens = streams[int(torch.randint(0, len(streams), (1,), generator=generator))]
        length = tokens.shape[1]
        start = 0
        if length > frames and torch.rand(1, generator=generator).item() < 0.5:
            start = int(torch.randint(0, length - frames + 1, (1,), generator=generator))
        window = tokens[:, start : start + frames]
        out[i, :, : window.shape[1]] = window
    return torch.from_numpy(out)


# --- the command -------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="training dialogues folder")
    parser.add_argument("--codec", type=Path, required=True, help="trained codec run folder")
    parser.add_argument(
        "--tokenizer", type=Path, required=True, help="tokenizer.model or its folder"
    )
    parser.add_argument("--config", choices=sorted(PRESETS), default="demo", help="LM shape")
    train.add_loop_arguments(parser, batch_size=32)
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    parser.add_argument("--warmup", type=int, default=500, metavar="STEPS")
    parser.add_argument("--frames", type=int, default=250, help="frames per training window")
    parser.add_argument("--pad-weight", type=float, default=0.5)
    parser.add_argument("--first-codebook-weight", type=float, default=10.0)


def run(args: argparse.Namespace) -> int:
    train_lm(args)
    print(f"lm: {args.out / WEIGHTS}")
    return 0


def train_lm(args: argparse.Namespace) -> int:
    """Train (or continue) an LM run; returns the steps done."""
    device = train.device_from(args.device)
    options = train.loop_options(args)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = TextTokenizer(
        args.tokenizer / TOKENIZER_FILE if args.tokenizer.is_dir() else args.tokenizer
    )
    codec_config = json.loads((args.codec / "codec.json").read_text())
    codebooks = int(codec_config["num_codebooks"])
    config = PRESETS[args.config](
        tokenizer.vocab_size, int(codec_config["codebook_size"]), codebooks
    )
    if config.temporal.context is not None and args.frames > config.temporal.context:
        raise ConfigError(
            f"--frames {args.frames} exceeds the LM's context {config.temporal.context}"
        )
    generator = train.seed_everything(args.seed)
    lm = LM(config).to(device).train()
    optimizer = torch.optim.AdamW(lm.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    start = 0
    if (out / train.CHECKPOINT).is_file():
        start, extra = train.load_checkpoint(out / train.CHECKPOINT, lm, optimizer, generator)
        train.resume_steps(options, extra)
        log.info("lm: resuming %s at step %d", out, start)
    streams = load_or_encode(args, tokenizer, codebooks, device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step(i: int) -> dict[str, float]:
        for group in optimizer.param_groups:
            group["lr"] = train.learning_rate(i, args.lr, args.warmup, options.schedule_steps)
        codes = sample_windows(streams, args.batch_size, args.frames, generator).to(device)
        with autocast:
            loss, metrics = lm_loss(lm, codes, args.pad_weight, args.first_codebook_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        optimizer.step()
        return {"loss": loss.item(), **metrics}

    def checkpoint(done: int) -> None:
        extra = {"steps": options.steps}
        train.save_checkpoint(out / train.CHECKPOINT, lm, optimizer, done, generator, extra)
        save_lm(lm, out)

    done = train.train_loop(step, checkpoint, start, options, out, "lm")
    if options.steps is not None and start >= options.steps:
        save_lm(lm, out)
    return done


def save_lm(lm: LM, folder: Path, dtype: torch.dtype = torch.float32) -> None:
    """lm.safetensors and config.json (Kyutai's keyword form)."""
    save_safetensors(lm.state_dict(), folder / WEIGHTS, dtype)
    (folder / CONFIG).write_text(json.dumps(lm_config_to_kyutai(lm.config), indent=1))
