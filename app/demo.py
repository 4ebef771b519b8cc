"""`antiphon talk` until the real-time runtime lands: one conversation, offline.

A generated "user" signal streams through the model exactly as microphone frames will (encode
→ LM step → decode, one 80 ms frame at a time); the inner monologue is printed as it comes and
the conversation is written as a stereo WAV (left = assistant, right = user).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import soundfile
import torch

from .models import add_model_arguments, load_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--seconds", type=float, default=6.0, help="length of the generated input")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("antiphon-talk.wav"),
        help="stereo WAV written: left = assistant, right = user",
    )


def generated_user_signal(seconds: float, sample_rate: int) -> np.ndarray:
    """Two voiced 'utterances' (a gliding harmonic tone with syllable rhythm) and pauses."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    pitch = 140 + 40 * np.sin(2 * math.pi * 0.5 * t)
    phase = 2 * math.pi * np.cumsum(pitch) / sample_rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 6))
    syllables = np.clip(np.sin(2 * math.pi * 4 * t), 0, None)
    speaking = ((t % 3.0) < 1.6).astype(np.float64)  # 1.6 s of speech every 3 s
    return (0.25 * voice * syllables * speaking).astype(np.float32)


def run(args: argparse.Namespace) -> int:
    model = load_from_args(args)
    codec, lm = model.codec, model.lm
    if model.tokenizer is None:
        print(
            "antiphon: no bundled model yet, so this runs a small RANDOMLY INITIALISED model "
            "on a generated WAV: its speech is noise and its text is meaningless token ids. "
            "Pass --hf-repo kyutai/moshiko-pytorch-bf16 (GPU) for the real model."
        )
    F = codec.frame_size
    user = generated_user_signal(args.seconds, codec.sample_rate)
    user = np.pad(user, (0, -len(user) % F))
    frames = torch.from_numpy(user).to(model.device).view(1, 1, -1)
    enc, dec = codec.init_encoder_state(1), codec.init_decoder_state(1)
    state = lm.init_state(1, model.sampling)
    text = model.tokenizer.stream() if model.tokenizer else None
    reply, timings = [], []
    print(f"model: {model.name} on {model.device}; {frames.shape[2] // F} frames of {F} samples")
    print("inner monologue: ", end="", flush=True)
    with torch.no_grad():
        for i in range(frames.shape[2] // F):
            start = time.perf_counter()
            codes = codec.encode_step(frames[:, :, i * F : (i + 1) * F], enc)
            out = lm.step(codes, state)
            reply.append(codec.decode_step(out.audio, dec)[0, 0].float().cpu().numpy())
            timings.append(time.perf_counter() - start)
            token = int(out.text[0])
            if text is not None:
                print(text.step(token), end="", flush=True)
            elif out.ready[0] and token not in (
                lm.config.text_padding_id,
                lm.config.end_of_text_padding_id,
            ):
                print(f"<{token}>", end="", flush=True)
    print()
    stereo = np.stack([np.concatenate(reply), user], axis=1)
    soundfile.write(args.out, stereo, codec.sample_rate, subtype="PCM_16")
    ms = 1000 * np.array(timings)
    frame_ms = 1000 * F / codec.sample_rate
    print(
        f"frame compute: median {np.median(ms):.1f} ms, p99 {np.percentile(ms, 99):.1f} ms "
        f"for {frame_ms:.0f} ms of audio (real-time factor {np.median(ms) / frame_ms:.2f})"
    )
    print(f"wrote {args.out} (left = assistant, right = user)")
    return 0
