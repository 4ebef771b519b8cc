import random
from pathlib import Path

import numpy as np
import pytest
import sentencepiece

from model.errors import AntiphonError, CheckpointError
from model.tokenizer import TextStream, TextTokenizer

PAD, END_OF_PADDING = 3, 0

SUBJECTS = ["the cat", "my friend", "a small robot", "the teacher", "our neighbour", "she", "he"]
VERBS = ["likes", "found", "is watching", "talked about", "will bring", "remembers"]
OBJECTS = ["the red ball", "a quiet garden", "the morning train", "some fresh bread", "the music"]
ENDINGS = ["today.", "again!", "before dinner.", "in the rain?", "with a smile."]


def sentences(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(words) for words in (SUBJECTS, VERBS, OBJECTS, ENDINGS)).capitalize()
        for _ in range(count)
    ]


def train(directory: Path, name: str, vocab_size: int, byte_fallback: bool) -> Path:
    corpus = directory / f"{name}.txt"
    corpus.write_text("\n".join(sentences(60)) + "\n")
    # Special ids as in Kyutai's tokenizer_spm_32k_3.model: <unk> 0 (doubles as the LM's
    # end-of-padding), <s> 1, </s> 2, <pad> 3 (the LM's text PAD).
    with open(directory / f"{name}.log", "w") as log:  # the trainer is chatty; needs a real fd
        sentencepiece.SentencePieceTrainer.train(
            input=str(corpus),
            model_prefix=str(directory / name),
            vocab_size=vocab_size,
            model_type="bpe",
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=3,
            character_coverage=1.0,
            byte_fallback=byte_fallback,
            hard_vocab_limit=False,
            logstream=log,
        )
    return directory / f"{name}.model"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> TextTokenizer:
    return TextTokenizer(train(tmp_path_factory.mktemp("spm"), "tiny", 80, byte_fallback=False))


@pytest.fixture(scope="module")
def byte_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> TextTokenizer:
    directory = tmp_path_factory.mktemp("spm_bytes")
    return TextTokenizer(train(directory, "bytes", 340, byte_fallback=True))


def with_padding(ids: list[int], seed: int, vocab_size: int) -> list[int]:
    """Interleave the LM's specials the way a real text stream has them: mostly PAD."""
    rng = random.Random(seed)
    out = [vocab_size, -1, PAD]  # initial token, moshi's "not generated" id, a pad
    for token_id in ids:
        out += [PAD] * rng.randrange(4) + [END_OF_PADDING, token_id]
    return out + [PAD, PAD]


def test_special_ids_mirror_kyutai(tokenizer: TextTokenizer) -> None:
    assert tokenizer.piece(END_OF_PADDING) == "<unk>"
    assert tokenizer.piece(PAD) == "<pad>"
    assert 60 <= tokenizer.vocab_size <= 100


def test_stream_equals_full_decode(tokenizer: TextTokenizer) -> None:
    text = " ".join(sentences(5, seed=1))
    ids = tokenizer.encode(text)
    stream = tokenizer.stream()
    pieces = [stream.step(i) for i in with_padding(ids, 0, tokenizer.vocab_size)]
    assert "".join(pieces) == tokenizer.decode(ids) == text
    assert stream.text == text


def test_specials_are_hidden(tokenizer: TextTokenizer) -> None:
    stream = tokenizer.stream()
    specials = [PAD, END_OF_PADDING, tokenizer.vocab_size, tokenizer.vocab_size + 7, -1, PAD]
    assert [stream.step(i) for i in specials] == [""] * len(specials)
    assert stream.text == ""


def test_word_starts_get_a_space_except_the_first(tokenizer: TextTokenizer) -> None:
    stream = tokenizer.stream()
    pieces = [stream.step(i) for i in [PAD, *tokenizer.encode("the cat likes the music")]]
    visible = [p for p in pieces if p]
    assert not visible[0].startswith(" ")
    assert sum(p.startswith(" ") for p in visible) == 4
    assert "".join(pieces) == "the cat likes the music"


def test_every_prefix_matches_decode_on_random_ids(byte_tokenizer: TextTokenizer) -> None:
    rng = random.Random(3)
    for _ in range(20):
        ids = [rng.randrange(-1, byte_tokenizer.vocab_size + 1) for _ in range(rng.randrange(60))]
        stream = byte_tokenizer.stream()
        kept: list[int] = []
        for token_id in ids:
            stream.step(token_id)
            if token_id in (PAD, END_OF_PADDING) or not 0 <= token_id < byte_tokenizer.vocab_size:
                continue
            kept.append(token_id)
            if not byte_tokenizer.is_byte(token_id):
                assert stream.text == byte_tokenizer.decode(kept)


def test_multibyte_characters_are_never_split(byte_tokenizer: TextTokenizer) -> None:
    text = "The café is naïve, 日本 ok"
    ids = byte_tokenizer.encode(text)
    assert any(byte_tokenizer.is_byte(i) for i in ids)
    stream = byte_tokenizer.stream()
    pieces = [stream.step(i) for i in with_padding(ids, 1, byte_tokenizer.vocab_size)]
    assert "\ufffd" not in "".join(pieces)
    assert "".join(pieces) == byte_tokenizer.decode(ids) == text


def test_custom_special_ids(tokenizer: TextTokenizer) -> None:
    ids = tokenizer.encode("the cat likes the music")
    hidden = {ids[0], ids[1]}
    stream = TextStream(tokenizer, pad_id=ids[0], end_of_padding_id=ids[1])
    streamed = "".join(stream.step(i) for i in ids)
    assert streamed == tokenizer.decode([i for i in ids if i not in hidden])
    assert streamed != tokenizer.decode(ids)


def test_what_the_model_heard_is_kept_apart_from_what_it_says(tokenizer: TextTokenizer) -> None:
    """A monologue that writes down what it heard: between open and close (or end-of-padding)
    the words are the user's, decoded on their own; outside, the model's own."""
    heard, said = tokenizer.encode("the cat"), tokenizer.encode("my friend likes music")
    opening, closing = 1, 2
    ids = [PAD, opening, *heard, PAD, closing, *said[:2], PAD, opening, *heard]
    ids += [END_OF_PADDING, *said[2:]]
    stream = tokenizer.stream(heard_ids=(opening, closing))
    flags = []
    for i in ids:
        piece = stream.step(i)
        if piece:
            flags.append((piece, stream.hearing))
    assert stream.text == "my friend likes music" and stream.heard_text == "the cat the cat"
    assert "".join(p for p, hearing in flags if hearing) == stream.heard_text
    assert "".join(p for p, hearing in flags if not hearing) == stream.text
    assert not stream.hearing  # end-of-padding closed the second stretch
    stream.reset()
    assert stream.heard_text == "" and not stream.hearing
    plain = tokenizer.stream()  # a model without the marks: every word is its own
    "".join(plain.step(i) for i in ids)
    assert plain.text.startswith("the cat") and plain.heard_text == "" and not plain.hearing


def test_numpy_ids_and_reset(tokenizer: TextTokenizer) -> None:
    ids = tokenizer.encode("my friend")
    stream = tokenizer.stream()
    assert "".join(stream.step(np.int64(i)) for i in ids) == "my friend"
    stream.reset()
    assert stream.text == ""
    assert "".join(stream.step(i) for i in ids) == "my friend"  # no leading space after reset


def test_piece_and_round_trip(tokenizer: TextTokenizer) -> None:
    ids = tokenizer.encode("she found the red ball")
    assert tokenizer.decode(ids) == "she found the red ball"
    assert "".join(tokenizer.piece(i) for i in ids).replace("\u2581", " ").strip() == (
        "she found the red ball"
    )
    with pytest.raises(IndexError):
        tokenizer.piece(tokenizer.vocab_size)


def test_missing_file_raises_project_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.model"
    with pytest.raises(CheckpointError, match="nope.model"):
        TextTokenizer(missing)
    with pytest.raises(CheckpointError, match=str(tmp_path)):
        TextTokenizer(tmp_path)  # a directory


def test_corrupt_file_raises_project_error(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.model"
    corrupt.write_bytes(b"not a sentencepiece model\x00\x01")
    with pytest.raises(CheckpointError, match="corrupt.model") as info:
        TextTokenizer(corrupt)
    assert isinstance(info.value, AntiphonError)
    assert isinstance(info.value.__cause__, RuntimeError)
