"""`antiphon train tokenizer`: a SentencePiece model of the dialogues' text.

Kyutai's special ids are kept, so the LM, `model.tokenizer` and the released conventions agree:
0 is <unk>, used as end-of-padding; 1 and 2 are <s> and </s>; 3 is <pad>, the inner
monologue's PAD. Byte fallback makes any text encodable. Trained on the training split only,
so the evaluation phrasings' words are not given their own pieces.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import sentencepiece

from model.errors import ConfigError
from model.tokenizer import TEXT_END_OF_PADDING_ID, TEXT_PAD_ID, TextTokenizer

from .dialogues import read_description, read_manifest

log = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.model"


def dialogue_sentences(folder: str | Path) -> list[str]:
    """Every request and answer of a folder of generated dialogues, in file order."""
    sentences = []
    for wav in read_manifest(folder):
        description = read_description(wav)
        for turn in description["turns"]:
            sentences += [s for s in (turn["turn"]["question"], turn["turn"]["answer"]) if s]
    if not sentences:
        raise ConfigError(f"{folder}: no dialogues found (generate them with `train data`)")
    return sentences


def train_tokenizer(
    sentences: list[str], out_dir: str | Path, vocab_size: int = 1024, seed: int = 0
) -> Path:
    """Train and write OUT_DIR/tokenizer.model; returns its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sentencepiece.set_random_generator_seed(seed)
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_prefix=str(out / "tokenizer"),
        model_type="unigram",
        vocab_size=vocab_size,
        hard_vocab_limit=False,  # a small corpus gets the pieces it has
        character_coverage=1.0,
        byte_fallback=True,
        unk_id=TEXT_END_OF_PADDING_ID,
        bos_id=1,
        eos_id=2,
        pad_id=TEXT_PAD_ID,
        num_threads=1,  # deterministic
        minloglevel=2,
    )
    path = out / TOKENIZER_FILE
    tokenizer = TextTokenizer(path)
    assert tokenizer.piece(TEXT_PAD_ID) == "<pad>" and tokenizer.piece(0) == "<unk>"
    log.info("tokenizer: %d pieces in %s", tokenizer.vocab_size, path)
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="training dialogues folder")
    parser.add_argument("--out", type=Path, required=True, help="folder for tokenizer.model")
    parser.add_argument("--vocab-size", type=int, default=1024, help="at most this many pieces")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    path = train_tokenizer(dialogue_sentences(args.data), args.out, args.vocab_size, args.seed)
    print(f"{path}: {TextTokenizer(path).vocab_size} pieces")
    return 0
