"""What the echo canceller does to the user's voice, as the LM hears it.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 .venv/bin/python scripts/echo_hearing.py \
        --run RUN_DIR/lm --data RUN_DIR/data/eval [--count 120]

With the far end silent (the assistant not speaking) the canceller should hand the microphone
on as it came. Held-out dialogues go through four user channels, all else equal:

- as recorded   the user channel of the dialogue
- delayed       the same 1.25 ms later (the canceller's processing delay; a control: a shift
                alone changes codes, since the codec's frames start elsewhere)
- cancelled     through the product's canceller (audio_io.echo), nothing played: after 0.5 s
                of a silent far end it passes the microphone on untouched
- AEC3 throughout  the same without that (`pass_through_after=None`): every frame through
                WebRTC AEC3 and the high-pass it enforces
- high-pass     the training augmentation's high-pass at 140 Hz, order 2 (about WebRTC's)

Reported per channel: the waveform's correlation with the recording at the best lag, the share
of the trained codec's codes equal to the recording's (per codebook), and an LM run's
teacher-forced held-out figures (`train lm`'s: heard_acc is how well its hearing head writes
down the user's words, so the run folder's checkpoint.pt is read, which has that head).
Prints a markdown table; the encoded folders stay in --work (encoded once).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile
import torch

from app.train.codec import load_trained_codec
from app.train.dialogues import _high_pass, read_description, read_dialogue, read_manifest
from app.train.lm import Trainee, held_out_figures
from app.train.lm_data import load_or_encode, with_training_rows
from audio_io.echo import EchoCanceller, EchoConfig
from model.kyutai_config import lm_config_from_kyutai
from model.lm import LM
from model.tokenizer import TextTokenizer

RATE, FRAME = 24000, 1920
SHIFT = 30  # samples: the canceller's delay, measured (group delay of its output, 1-6 kHz)


def cancelled(user: np.ndarray, pass_through: bool = True) -> np.ndarray:
    config = EchoConfig(sample_rate=RATE, frame_size=FRAME)
    if not pass_through:
        config = dataclasses.replace(config, pass_through_after=None)
    echo = EchoCanceller(config)
    whole = len(user) // FRAME * FRAME
    out = [echo.cancel(user[i : i + FRAME], i / RATE).pcm for i in range(0, whole, FRAME)]
    return np.concatenate([*out, np.zeros(len(user) - whole, np.float32)])


CHANNELS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "as recorded": lambda user: user,
    "delayed": lambda user: np.concatenate([np.zeros(SHIFT, np.float32), user[:-SHIFT]]),
    "cancelled": cancelled,
    "AEC3 throughout": lambda user: cancelled(user, pass_through=False),
    "high-pass": lambda user: _high_pass(user, 140.0, 2),
}


def best_correlation(a: np.ndarray, b: np.ndarray, max_lag: int = 400) -> float:
    """Normalised correlation of b with a, at b's best lag behind a (0..max_lag samples)."""
    best = -1.0
    for lag in range(max_lag):
        x, y = a[: len(a) - lag], b[lag:]
        best = max(best, float(np.dot(x, y) / np.sqrt(np.dot(x, x) * np.dot(y, y) + 1e-12)))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="an LM run folder (`train lm`)")
    parser.add_argument("--data", type=Path, required=True, help="held-out dialogues")
    parser.add_argument("--codec", type=Path, default=Path("trained/codec"))
    parser.add_argument("--tokenizer", type=Path, default=Path("trained/tokenizer"))
    parser.add_argument("--count", type=int, default=120, help="dialogues")
    parser.add_argument("--work", type=Path, default=Path("/tmp/echo-hearing"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    tokenizer = TextTokenizer(args.tokenizer / "tokenizer.model")
    config = lm_config_from_kyutai(json.loads((args.run / "config.json").read_text()))
    model = Trainee(LM(config), hearing=True)
    saved = torch.load(args.run / "checkpoint.pt", map_location="cpu", weights_only=False)
    model.load_state_dict(saved["model"])
    model.eval()
    codec = load_trained_codec(args.codec)
    codebooks = codec.config.num_codebooks
    files = read_manifest(args.data)[: args.count]
    new_voice = [bool(read_description(path).get("held_out_voice")) for path in files]
    dialogues = [read_dialogue(path)[0] for path in files]  # read once: [2, samples] each
    rows = []
    for name, through in CHANNELS.items():
        folder = args.work / name.replace(" ", "-")
        folder.mkdir(parents=True, exist_ok=True)
        correlations = []
        for path, pcm in zip(files, dialogues, strict=True):
            user = through(pcm[1].copy())
            correlations.append(best_correlation(pcm[1], user))
            if not (folder / path.name).is_file():
                soundfile.write(str(folder / path.name), np.stack([pcm[0], user]).T, RATE,
                                subtype="FLOAT")  # fmt: skip
                shutil.copyfile(path.with_suffix(".json"), folder / f"{path.stem}.json")
        manifest = "".join(json.dumps({"path": path.name}) + "\n" for path in files)
        (folder / "manifest.jsonl").write_text(manifest)
        streams = load_or_encode(
            folder, args.codec, tokenizer, codebooks, torch.device("cpu"),
            folder / "tokens.npz", progress=False, bf16=False,
        )  # fmt: skip
        if name == "as recorded":
            reference = streams
        user_rows = slice(1 + codebooks, 1 + 2 * codebooks)  # the user's codes
        equal = [
            float(np.mean(np.concatenate([(a[user_rows][k] == b[user_rows][k]) for a, b in
                                          zip(reference, streams, strict=True)])))
            for k in range(codebooks)
        ]  # fmt: skip
        hears = config.heard_ids is not None  # its text rows as it was trained on them
        heard = with_training_rows(folder, streams, tokenizer, codec.config.frame_rate, 2, hears)
        with torch.no_grad():
            figures = held_out_figures(model, heard, 400, 0.5, 10.0, new_voice)
        rows.append((name, float(np.median(correlations)), equal, figures))
        print(f"{name}: done", flush=True)
    print(f"\n{args.count} held-out dialogues of {args.data}, LM {args.run}\n")
    print("| user channel | correlation | codes equal (1st, 2nd, 8th codebook) | heard_acc "
          "| answer_acc | answer_first_acc |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for name, correlation, equal, figures in rows:
        print(
            f"| {name} | {correlation:.2f} | {equal[0]:.2f}, {equal[1]:.2f}, {equal[-1]:.2f} "
            f"| {figures.get('heard_acc', float('nan')):.3f} | {figures['answer_acc']:.3f} "
            f"| {figures['answer_first_acc']:.3f} |"
        )


if __name__ == "__main__":
    main()
