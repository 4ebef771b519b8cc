"""`antiphon train data|tokenizer|teacher|codec|lm|...`: everything that makes the demo model.

    antiphon train data --out data/train --count 5000 --split train
    antiphon train tokenizer --data data/train --out runs/tokenizer
    antiphon train teacher --data data/train --out runs/teacher --steps 3000
    antiphon train codec --data data/train --teacher runs/teacher --out runs/codec --minutes 6
    antiphon train lm --data data/train --codec runs/codec --tokenizer runs/tokenizer \\
        --out runs/lm --device cuda --minutes 7
    antiphon train export --codec runs/codec --lm runs/lm --tokenizer runs/tokenizer --out assets
    antiphon train eval --assets assets --data data/eval --json runs/eval.json
    antiphon train card --run runs --assets assets
    antiphon train plot runs/codec                 # runs/codec/curves.png

(docs/demo-model.md has the exact sequence, seeds and expected times.) Also runnable without
the rest of the app as `python -m app.train ...` (a training machine needs no sound devices).

Runs are resumable: a run folder holds `checkpoint.pt` (weights, optimizer state, step and
every random state), written every `--checkpoint-every` steps and when `--time-limit` is
reached; running the same command again continues from it, and the continued run computes the
same numbers as an uninterrupted one. The trained weights are also written as safetensors with
their config at every checkpoint, so a partial run is usable. `--minutes` instead of `--steps`
fixes the number of steps from the speed of the first ones; log.jsonl records it, so
`--steps` reproduces the run.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from app.core.commands import main as run_main

from . import card, codec, export, lm, plot, quality, teacher, tokenizer
from .dialogues import generate


def _data(args: argparse.Namespace) -> int:
    rows = generate(args.out, args.count, args.seed, args.split, args.workers)
    hours = sum(row["duration"] for row in rows) / 3600
    print(f"{len(rows)} dialogues ({hours:.2f} h) in {args.out}")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:

    stages = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    data = stages.add_parser("data", help="generate synthetic dialogues (espeak-ng)")
    data.add_argument("--out", type=Path, required=True, help="folder to write")
    data.add_argument("--count", type=int, required=True, help="number of dialogues")
    data.add_argument("--split", choices=("train", "eval"), default="train")
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    data.set_defaults(stage_handler=_data)
    for name, module, text in (
        ("tokenizer", tokenizer, "train the SentencePiece text tokenizer"),
        ("teacher", teacher, "train the speech recogniser the codec's first codebook learns"),
        ("codec", codec, "train the codec (Mimi architecture)"),
        ("lm", lm, "train the LM (Moshi architecture) on the codec's tokens"),
        ("export", export, "write the trained model into assets/ (safetensors + configs)"),
        ("eval", quality, "measure the demo model's quality figures on held-out dialogues"),
        ("card", card, "write MODEL_CARD.md next to the weights from the run's records"),
        ("plot", plot, "draw a run's training loss and held-out figures (curves.png)"),
    ):
        sub = stages.add_parser(name, help=text)
        module.add_arguments(sub)
        sub.set_defaults(stage_handler=module.run)


def run(args: argparse.Namespace) -> int:
    return int(args.stage_handler(args))


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m app.train ...`: logs at INFO (the log is the progress report of long runs)."""
    parser = argparse.ArgumentParser(prog="python -m app.train", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add_arguments(parser)
    parser.set_defaults(handler=run)
    return run_main(parser, argv, name="antiphon train", log_level=logging.INFO)
