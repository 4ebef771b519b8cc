"""Training smoke tests on CPU with tiny shapes: tokenizer, codec, LM, export, evaluation.

The real run (docs/demo-model.md) is the same code with the demo shapes on a GPU.
"""

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from app.core.engine import Engine
from app.core.models import add_model_arguments, bundled_model, load_from_args
from app.train import card, cli, loop, teacher
from app.train.codec import (
    SpeechSegments,
    forward_train,
    load_trained_codec,
    phoneme_loss,
    train_codec,
)
from app.train.dialogues import generate, read_manifest
from app.train.export import export
from app.train.features import MultiResolutionMelLoss, edit_distance
from app.train.lm import (
    BEST,
    BEST_FIGURES,
    TOKENS,
    Trainee,
    answer_score,
    held_out_figures,
    keep_if_best,
    lm_loss,
    token_caches,
    train_lm,
)
from app.train.lm_data import (
    WindowSampler,
    _Encoded,
    _sample_folder,
    check_live_codes,
    codes_used,
    encode_dialogues,
    load_or_encode,
    noisy_user_codes,
    with_training_rows,
)
from app.train.monologue import answer_frames, text_tokens
from app.train.phonemes import PhonemeTable
from app.train.quality import FIGURES, evaluate
from app.train.tokenizer import dialogue_sentences, train_tokenizer
from model.bundle import CARD_FILE, bundle_files, bundle_summary
from model.checkpoint import lm_config_from_kyutai, load_codec, load_lm
from model.codec import Codec
from model.config import tiny_lm, tiny_mimi
from model.errors import ConfigError
from model.lm import LM
from model.quantizer import CodebookTraining
from model.tokenizer import TEXT_END_OF_PADDING_ID, TEXT_PAD_ID, TextTokenizer
from tests.app.train.test_dialogues import require_espeak


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three short training dialogues, two held-out ones, and a tokenizer."""
    require_espeak()
    root = tmp_path_factory.mktemp("train")
    generate(root / "data", 3, seed=1, split="train", progress=False)
    generate(root / "eval", 2, seed=1, split="eval", progress=False)
    train_tokenizer(dialogue_sentences(root / "data"), root / "tokenizer", vocab_size=400)
    return root


def _args(stage: str, *argv: str | Path) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args([stage, *map(str, argv), "--no-progress"])


def _codec_args(work: Path, out: Path, *extra: str) -> argparse.Namespace:
    return _args(
        "codec", "--data", work / "data", "--out", out, "--config", "tiny", "--steps", "4",
        "--batch-size", "2", "--segment", "0.32", "--log-every", "1", "--vq-start", "1",
        "--eval-data", work / "eval", "--eval-every", "2", *extra,
    )  # fmt: skip


def _lm_argv(work: Path, out: Path, *extra: str) -> list[str]:
    return [str(arg) for arg in (
        "lm", "--data", work / "data", "--codec", work / "codec", "--tokenizer",
        work / "tokenizer", "--out", out, "--config", "tiny", "--steps", "4", "--batch-size",
        "2", "--frames", "12", "--log-every", "1", "--allow-dead-codes", "--eval-data",
        work / "eval", "--eval-every", "2", *extra,
    )]  # fmt: skip


def _lm_args(work: Path, out: Path, *extra: str) -> argparse.Namespace:
    return _args(*_lm_argv(work, out, *extra))


def _losses(run: Path) -> list[float]:
    lines = [json.loads(line) for line in (run / loop.LOG).read_text().splitlines()]
    return [line["loss"] for line in lines if "loss" in line]


@pytest.fixture(scope="module")
def codec_run(work: Path) -> Path:
    train_codec(_codec_args(work, work / "codec"))
    return work / "codec"


@pytest.fixture(scope="module")
def lm_run(work: Path, codec_run: Path) -> Path:
    train_lm(_lm_args(work, work / "lm"))
    return work / "lm"


def test_tokenizer_keeps_kyutai_special_ids(work: Path) -> None:
    tokenizer = TextTokenizer(work / "tokenizer" / "tokenizer.model")
    assert tokenizer.piece(TEXT_PAD_ID) == "<pad>"
    assert tokenizer.piece(TEXT_END_OF_PADDING_ID) == "<unk>"
    sentence = dialogue_sentences(work / "data")[0]
    assert tokenizer.decode(tokenizer.encode(sentence)) == sentence


def test_codec_overfits_one_batch(work: Path) -> None:
    torch.manual_seed(0)
    config = tiny_mimi()
    codec = Codec(config).train()
    segments = SpeechSegments(work / "data", 1.0, config.sample_rate)
    batch = segments.batch(2, 4 * config.frame_size, torch.Generator().manual_seed(0)).pcm
    mel_loss = MultiResolutionMelLoss(config.sample_rate)
    optimizer = torch.optim.AdamW(codec.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        estimate, commitment, _, _ = forward_train(codec, batch, CodebookTraining(), 0.5)
        loss = mel_loss(estimate, batch) + commitment
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])


def test_codec_run_resumes_exactly(work: Path, codec_run: Path) -> None:
    resumed = work / "codec_resumed"
    assert train_codec(_codec_args(work, resumed, "--time-limit", "0")) == 1  # stops at once
    assert train_codec(_codec_args(work, resumed)) == 4  # the same command goes on
    assert _losses(resumed) == _losses(codec_run)  # bit for bit, as if never stopped
    # What the run saved loads with the model's own loader and encodes like the trained one.
    trained = load_trained_codec(codec_run)
    state = torch.load(codec_run / loop.CHECKPOINT, weights_only=True)["model"]
    reference = Codec(trained.config)
    reference.load_state_dict({k.removeprefix("codec."): v for k, v in state.items()})
    pcm = torch.randn(1, 1, 3 * trained.frame_size) * 0.1
    with torch.no_grad():
        assert torch.equal(trained.encode(pcm), reference.eval().encode(pcm))


def test_decoder_only_training_keeps_every_code(work: Path, codec_run: Path) -> None:
    out = work / "codec-decoder"
    train_codec(_codec_args(work, out, "--decoder-only", str(codec_run)))
    before, after = load_trained_codec(codec_run), load_trained_codec(out)
    pcm = torch.from_numpy(np.random.default_rng(0).normal(0, 0.1, 24000).astype(np.float32))
    with torch.no_grad():
        assert torch.equal(before.encode(pcm.view(1, 1, -1)), after.encode(pcm.view(1, 1, -1)))
    old, new = before.state_dict(), after.state_dict()
    changed = {k.split(".")[0] for k in old if not torch.equal(old[k], new[k])}
    assert changed == {"upsample", "decoder_transformer", "decoder", "quantizer"}
    assert all(torch.equal(old[k], new[k]) for k in old if ".output_proj." not in k and
               k.startswith("quantizer"))  # fmt: skip


def test_the_first_codebook_learns_phonemes_and_the_head_stays_behind(
    work: Path, codec_run: Path
) -> None:
    out = work / "codec-phonemes"
    args = _codec_args(work, out, "--init", str(codec_run), "--phoneme-weight", "1")
    args.steps, args.lr, args.warmup, args.eval_every = 30, 3e-3, 1, 30
    train_codec(args)
    lines = [json.loads(line) for line in (out / loop.LOG).read_text().splitlines()]
    losses = [line["phonemes"] for line in lines if "phonemes" in line]
    assert len(losses) == 30 and np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    figures = [line["eval"] for line in lines if "eval" in line][-1]
    assert 0 <= figures["phoneme_acc"] <= 1 and "phoneme_acc_new_voice" in figures
    table = json.loads((out / "phonemes.json").read_text())
    assert {"k", "w", "z"} <= set(table["inventory"]) and table["words"]["count"][0] == "k"
    # The shipped codec is a plain codec (the head is training-only), started from the other.
    state = torch.load(out / loop.CHECKPOINT, weights_only=True)["model"]
    assert any(k.startswith("phonemes.") for k in state)
    assert set(load_trained_codec(out).state_dict()) == set(
        load_trained_codec(codec_run).state_dict()
    )


def test_answer_frames_are_the_tokens_that_make_an_answer_right() -> None:
    def turn(start: float, end: float, accept: list[str]) -> dict:
        return {"assistant_start": start, "assistant_end": end, "turn": {"accept": accept}}

    description: dict[str, Any] = {
        "alignments": [
            ["Add", [0.0, 0.2], "SPEAKER_USER"], ["two", [0.2, 0.4], "SPEAKER_USER"],
            ["That", [0.8, 0.96], "SPEAKER_MAIN"], ["is", [0.96, 1.04], "SPEAKER_MAIN"],
            ["two.", [1.04, 1.2], "SPEAKER_MAIN"], ["Cup:", [1.6, 1.76], "SPEAKER_MAIN"],
            ["C,", [1.76, 1.84], "SPEAKER_MAIN"], ["U.", [1.84, 2.0], "SPEAKER_MAIN"],
        ],
        "turns": [turn(0.8, 1.2, ["is two"]), turn(1.6, 2.0, ["c u"]),
                  {"assistant_start": None, "turn": {"accept": []}}],
    }  # fmt: skip
    ids = {"that": [5], "is": [6], "two.": [7, 8], "cup:": [9], "c,": [10], "u.": [11]}
    encode = lambda word: ids.get(word.lower(), [])  # noqa: E731
    marks = answer_frames(description, encode, 30, 12.5)
    tokens = text_tokens(description["alignments"], encode, 30, 12.5)
    # each answer's first token ("That", "Cup:") is marked 2; "two." (both its tokens), "C,"
    # and "U." 1; "is" is not, nor the user's "two"
    assert [(t, m) for t, m in zip(tokens, marks, strict=True) if m] == [
        (5, 2), (7, 1), (8, 1), (9, 2), (10, 1), (11, 1)
    ]  # fmt: skip


def test_phoneme_labels_follow_the_words_and_the_loss_takes_their_mix() -> None:
    require_espeak()
    table = PhonemeTable.build(["Count", "four."], progress=False)
    assert table.words == {"count": ["k", "aU", "n", "t"], "four": ["f", "o@"]}
    alignments = [["Count", [0.16, 0.48], "SPEAKER_USER"], ["Four.", [0.0, 0.16], "SPEAKER_MAIN"]]
    labels = table.frame_labels(alignments, "SPEAKER_USER", 8, 12.5)  # 4 instants of 20 ms
    k, au, n, t = (table.inventory.index(p) + 1 for p in ["k", "aU", "n", "t"])
    assert (
        labels.reshape(-1).tolist()[:28]
        == [0] * 8 + [k] * 4 + [au] * 4 + [n] * 4 + [t] * 4 + [0] * 4
    )
    logits = torch.full((1, 8, table.classes), -9.0)
    logits[0, 2, k] = logits[0, 3, n] = 9.0  # frames 2 and 3: "k" (right), "n" (wrong: "aU")
    fit = phoneme_loss(logits, torch.from_numpy(labels[None]).long())
    assert (int(fit.right), int(fit.speech)) == (1, 4)  # 4 speech frames ("k aU n t"), 1 right
    assert phoneme_loss(logits, torch.full((1, 8, 4), -1)).loss == 0  # nothing known: no loss


def test_an_encoding_that_stops_goes_on_where_it_stopped(work: Path, codec_run: Path) -> None:
    tokenizer = TextTokenizer(work / "tokenizer" / "tokenizer.model")
    codec = load_trained_codec(codec_run)

    def encode(encoded: _Encoded | None) -> list[np.ndarray]:
        return encode_dialogues(
            work / "data", codec, tokenizer, 4, torch.device("cpu"), batch=2, progress=False,
            encoded=encoded,
        )  # fmt: skip

    fresh = encode(None)
    for path, streams in zip(read_manifest(work / "data"), fresh, strict=True):  # manifest order
        alignments = json.loads(path.with_suffix(".json").read_text())["alignments"]
        assert streams[0].tolist() == text_tokens(alignments, tokenizer.encode, streams.shape[1])
    stopped = _Encoded(work / "partial.npz", "run A")
    stopped.done = {1: np.full_like(fresh[1], 7)}  # marked: a dialogue encoded before the stop
    stopped.save()
    resumed = encode(_Encoded(work / "partial.npz", "run A"))
    assert (resumed[1] == 7).all()  # not encoded again
    assert all(np.array_equal(a, b) for a, b in zip(resumed[::2], fresh[::2], strict=True))
    other = encode(_Encoded(work / "partial.npz", "run B"))  # another codec or data: no reuse
    assert all(np.array_equal(a, b) for a, b in zip(other, fresh, strict=True))

    class SignalledTokenizer(TextTokenizer):  # the real one, and SIGTERM at its call `at`
        def __init__(self, at: int) -> None:
            super().__init__(tokenizer.path)
            self.calls, self.at = 0, at

        def encode(self, text: str) -> list[int]:
            self.calls += 1
            if self.calls == self.at:
                os.kill(os.getpid(), signal.SIGTERM)
            return super().encode(text)

    counted = SignalledTokenizer(at=0)  # never signals: how many calls a whole encoding makes
    encode_dialogues(
        work / "data", codec, counted, 4, torch.device("cpu"), batch=2, progress=False
    )  # fmt: skip
    assert len(fresh) == 3  # batches of 2 and 1 dialogues
    for at, left in ((1, 1), (counted.calls, 0)):  # a stop in the first batch, and in the last
        partial = work / f"signalled-{at}.npz"
        with pytest.raises(KeyboardInterrupt):
            encode_dialogues(
                work / "data", codec, SignalledTokenizer(at), 4, torch.device("cpu"), batch=2,
                progress=False, encoded=_Encoded(partial, "run C"),
            )  # fmt: skip
        saved = _Encoded(partial, "run C")  # the batch under way finished and was saved
        assert len(saved.done) == len(fresh) - left
        resumed = encode(saved)
        assert all(np.array_equal(a, b) for a, b in zip(resumed, fresh, strict=True))


def test_a_grown_folder_encodes_only_its_new_dialogues(
    work: Path, codec_run: Path, tmp_path: Path
) -> None:
    tokenizer = TextTokenizer(work / "tokenizer" / "tokenizer.model")

    def load(data: Path) -> list[np.ndarray]:
        return load_or_encode(data, codec_run, tokenizer, 4, torch.device("cpu"), cache, False)

    cache = tmp_path / TOKENS
    fresh = load(work / "data")
    _sample_folder(work / "data", tmp_path / "first-two", count=2)  # the folder before it grew
    cache.unlink()
    assert all(
        np.array_equal(a, b) for a, b in zip(load(tmp_path / "first-two"), fresh[:2], strict=True)
    )
    stored = dict(np.load(cache))
    stored["tokens"] = np.full_like(stored["tokens"], 7)  # marked: what was encoded before
    np.savez(cache, **stored)
    grown = load(work / "data")
    assert (grown[0] == 7).all() and (grown[1] == 7).all()  # taken from the cache
    assert np.array_equal(grown[2], fresh[2])  # the new one encoded
    assert (load(work / "data")[0] == 7).all()  # and the cache now holds all three
    wav = read_manifest(work / "data")[1]
    written = wav.stat()
    os.utime(wav, ns=(written.st_atime_ns, written.st_mtime_ns + 10**9))  # written again
    try:
        again = load(work / "data")
    finally:
        os.utime(wav, ns=(written.st_atime_ns, written.st_mtime_ns))
    assert (again[0] == 7).all() and np.array_equal(again[1], fresh[1])  # that one encoded anew
    other_codec = tmp_path / "other-codec"
    shutil.copytree(codec_run, other_codec)
    weights = load_file(str(codec_run / "codec.safetensors"))  # another codec: nothing taken
    save_file(
        {k: v + 0.01 if v.is_floating_point() else v for k, v in weights.items()},
        str(other_codec / "codec.safetensors"),
    )
    again = load_or_encode(
        work / "data", other_codec, tokenizer, 4, torch.device("cpu"), cache, False
    )
    assert not (again[0] == 7).all()


def test_lm_overfits_one_batch(work: Path, codec_run: Path, tmp_path: Path) -> None:
    tokenizer = TextTokenizer(work / "tokenizer" / "tokenizer.model")
    streams = load_or_encode(
        work / "data", codec_run, tokenizer, 4, torch.device("cpu"), tmp_path / TOKENS, False
    )
    assert len(streams) == 3 and streams[0].shape[0] == 1 + 2 * 4
    text = streams[0][0]
    assert (text == TEXT_PAD_ID).any() and (text == TEXT_END_OF_PADDING_ID).any()
    assert (streams[0][1 + 4 :, -1] == -1).all()  # the user one frame ahead: none after the end
    torch.manual_seed(0)
    from app.train.lm import PRESETS

    lm = LM(PRESETS["tiny"](tokenizer.vocab_size, 64, 4)).train()
    batch = WindowSampler(streams, 12, 24).batch(torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(lm.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss, _ = lm_loss(lm, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0]


def test_the_hearing_head_learns_to_write_down_the_users_words(
    work: Path, codec_run: Path, tmp_path: Path
) -> None:
    tokenizer = TextTokenizer(work / "tokenizer" / "tokenizer.model")
    streams = load_or_encode(
        work / "data", codec_run, tokenizer, 4, torch.device("cpu"), tmp_path / TOKENS, False
    )
    heard = with_training_rows(work / "data", streams, tokenizer, 12.5, delay_frames=2)
    hears = with_training_rows(work / "data", streams, tokenizer, 12.5, 2, monologue_hears=True)
    for without, both in zip(heard, hears, strict=True):  # only the text row changes:
        assert np.array_equal(without[1:], both[1:])  # the user's words written where it is
        said = without[0] != TEXT_PAD_ID  # silent, between the marks
        assert np.array_equal(without[0][said], both[0][said]) and 1 in both[0]
    assert all(h.shape == (s.shape[0] + 2, s.shape[1]) for h, s in zip(heard, streams, strict=True))
    assert all(
        np.array_equal(h[:-2], s) for h, s in zip(heard, streams, strict=True)
    )  # the rest as it was
    words = heard[0][-2]
    spoken = words[(words != TEXT_PAD_ID) & (words != TEXT_END_OF_PADDING_ID)]
    assert len(spoken) >= 3  # the user asked something
    torch.manual_seed(0)
    from app.train.lm import PRESETS

    model = Trainee(LM(PRESETS["tiny"](tokenizer.vocab_size, 64, 4)), hearing=True).train()
    batch = WindowSampler(heard, 48, 96).batch(torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    figures = []
    for _ in range(25):
        loss, metrics = lm_loss(model.lm, batch, hearing=model.hearing, hear_weight=1.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        figures.append(metrics)
    assert figures[-1]["heard"] < 0.5 * figures[0]["heard"]
    # without the head the same batch trains the LM alone: no hearing figures
    _, plain = lm_loss(model.lm, batch)
    assert "heard" not in plain
    # the answer row marks text frames only, and weighing them changes the loss
    answers = np.concatenate([h[-1] for h in heard])
    texts = np.concatenate([h[0] for h in heard])
    assert (answers == 2).sum() > 0 and set(texts[answers > 0]).isdisjoint({TEXT_PAD_ID})
    weighted, metrics = lm_loss(model.lm, batch, answer_weight=5.0)
    assert 0 <= metrics["answer_acc"] <= 1 and metrics["answer_count"] == (batch[:, -1] > 0).sum()
    assert metrics["answer_first_count"] == (batch[:, -1] == 2).sum()
    assert not torch.isclose(weighted, lm_loss(model.lm, batch)[0])
    # held-out figures: the held-out voice's accuracies are those of its dialogues alone
    weights = (0.5, 10.0)
    marked = [True] + [False] * (len(heard) - 1)
    whole = held_out_figures(model, heard, 48, *weights, new_voice=marked)
    alone = held_out_figures(model, heard[:1], 48, *weights)
    shared = [k for k in ("text_acc", "heard_acc", "answer_acc", "answer_first_acc") if k in alone]
    assert shared and all(whole[f"voice_{k}"] == alone[k] for k in shared)
    assert {k: v for k, v in whole.items() if not k.startswith("voice_")} == held_out_figures(
        model, heard, 48, *weights
    )


def test_a_run_starts_from_another_runs_weights(work: Path, lm_run: Path) -> None:
    started = work / "lm_init"
    train_lm(_lm_args(work, started, "--init", str(lm_run), "--steps", "0"))
    trained, copied = (load_lm_state(run) for run in (lm_run, started))
    assert trained.keys() == copied.keys()
    assert all(torch.equal(trained[k], copied[k]) for k in trained)
    # the weights it starts from are evaluated and are the best until a step beats them
    rows = [json.loads(line) for line in (started / loop.LOG).read_text().splitlines()]
    assert [row["step"] for row in rows if "eval" in row] == [0]
    assert json.loads((started / BEST / BEST_FIGURES).read_text())["step"] == 0
    kept = load_lm_state(started / BEST)
    assert all(torch.equal(trained[k], kept[k]) for k in trained)


def test_a_run_trains_on_several_folders_each_encoded_once(
    work: Path, codec_run: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    second = tmp_path / "train2"  # more dialogues, of another seed, in a folder of their own
    generate(second, 2, seed=2, split="train", progress=False)
    run = tmp_path / "run"
    argv = _lm_argv(work, run, "--user-noise", "0.1", "0.5", "--steps", "1")
    argv.insert(argv.index("--data") + 2, str(second))
    with caplog.at_level(logging.INFO):
        train_lm(_args(*argv))
    assert "lm: 5 dialogues" in caplog.text
    assert token_caches([work / "data", second]) == [TOKENS, "tokens-train2.npz"]
    first, other = (np.load(run / cache) for cache in token_caches([work / "data", second]))
    assert (len(first["lengths"]), len(other["lengths"])) == (3, 2)
    clashing = [Path("a/train"), Path("b/train2"), Path("c/train2"), Path("d/eval")]
    assert token_caches(clashing) == [TOKENS, "tokens-train2.npz", "tokens-3.npz", "tokens-4.npz"]
    caplog.clear()
    with caplog.at_level(logging.INFO):
        train_lm(_args(*argv[:-2], "--steps", "2"))  # goes on: nothing encoded again
    assert "encoding" not in caplog.text and "resuming" in caplog.text
    from model.errors import ConfigError

    noise = argv.index("--user-noise")
    other = [*argv[:noise], "--user-noise", "0.2", "0.5", *argv[noise + 3 : -2], "--steps", "3"]
    with pytest.raises(
        ConfigError, match=r"started with --user-noise 0\.1 0\.5; now --user-noise 0\.2 0\.5"
    ):
        train_lm(_args(*other))  # other numbers than the run it continues: refused


def test_audio_embeddings_start_from_the_codecs_codebooks(work: Path, lm_run: Path) -> None:
    started = work / "lm_codec_embeddings"
    train_lm(_lm_args(work, started, "--init", str(lm_run), "--codec-embeddings", "--steps", "0"))
    before, after = (load_lm_state(run) for run in (lm_run, started))
    vectors = load_trained_codec(work / "codec").quantizer.code_vectors(4)  # [K, card, D]
    card = vectors.shape[1]

    def cosines(rows: torch.Tensor) -> torch.Tensor:
        rows = torch.nn.functional.normalize(rows.float(), dim=-1)
        return rows @ rows.T

    norms = vectors.norm(dim=-1)  # never-used codes of a tiny codec have (nearly) none
    live = norms > 1e-3 * norms.amax(dim=-1, keepdim=True)
    for name, k in (("emb.0", 0), ("emb.3", 3), ("emb.4", 0), ("depformer_emb.2", 2)):
        table = after[f"{name}.weight"]
        assert table.std().item() == pytest.approx(1.0, rel=0.05)  # nn.Embedding's spread
        # code similarity in the codec is similarity in the LM (an orthonormal map)
        kept = live[k]
        torch.testing.assert_close(
            cosines(table[:card][kept]), cosines(vectors[k][kept]), atol=1e-5, rtol=0
        )
        assert torch.equal(table[card], before[f"{name}.weight"][card])  # the initial token
    # one code of the assistant and of the user start orthogonal: the speakers stay apart
    both = after["emb.0.weight"][:card] @ after["emb.4.weight"][:card].T
    assert both.abs().max().item() < 1e-4
    # everything else is the init run's
    for key in before:
        if not key.startswith(("emb.", "depformer_emb.")):
            assert torch.equal(before[key], after[key]), key
    # a resumed run keeps the embeddings it learnt
    resumed = work / "lm_codec_embeddings_resumed"
    argv = ("--init", str(lm_run), "--codec-embeddings", "--steps", "1")
    train_lm(_lm_args(work, resumed, *argv))
    trained = load_lm_state(resumed)
    assert not torch.equal(trained["emb.0.weight"], after["emb.0.weight"])  # a step was taken
    train_lm(_lm_args(work, resumed, *argv))  # nothing left to do: loads, saves again
    assert all(torch.equal(trained[k], v) for k, v in load_lm_state(resumed).items())


def test_frozen_user_embeddings_stay_in_the_codecs_geometry(work: Path, lm_run: Path) -> None:
    from model.errors import ConfigError

    started = work / "lm_frozen_start"  # the same init and start, untrained
    train_lm(_lm_args(work, started, "--init", str(lm_run), "--codec-embeddings", "--steps", "0"))
    frozen = work / "lm_frozen_user"
    argv = ("--init", str(lm_run), "--codec-embeddings", "--frozen-user-embeddings")
    train_lm(_lm_args(work, frozen, *argv, "--steps", "2"))
    before, after = load_lm_state(started), load_lm_state(frozen)
    codebooks = 4  # the tiny LM's: the assistant's emb.0-3, the user's emb.4-7
    for k in range(codebooks, 2 * codebooks):  # the user's tables: not a bit moved
        assert torch.equal(after[f"emb.{k}.weight"], before[f"emb.{k}.weight"]), k
    for name in ("emb.0.weight", "depformer_emb.0.weight", "text_emb.weight"):  # the rest learns
        assert not torch.equal(after[name], before[name]), name
    thawed = ("--init", str(lm_run), "--codec-embeddings", "--steps", "3")  # resumed without it
    with pytest.raises(ConfigError, match="another --hear-weight or --frozen-user-embeddings"):
        train_lm(_lm_args(work, frozen, *thawed))
    with pytest.raises(ConfigError, match="not random ones"):  # nothing to keep them at
        train_lm(_lm_args(work, work / "lm_frozen_random", "--frozen-user-embeddings"))


def test_a_run_that_does_not_fit_gets_one_clear_line(work: Path, lm_run: Path) -> None:
    from model.errors import ConfigError

    with pytest.raises(ConfigError, match="another --hear-weight"):  # resumed without the head
        train_lm(_lm_args(work, lm_run, "--hear-weight", "0", "--steps", "5"))
    with pytest.raises(ConfigError, match="no lm.safetensors"):
        train_lm(_lm_args(work, work / "lm_init_bad", "--init", str(work / "data")))
    with pytest.raises(ConfigError, match="--user-noise 1.5 0: two shares"):
        train_lm(_lm_args(work, work / "lm_noise_bad", "--user-noise", "1.5", "0"))


def test_a_monologue_that_hears_is_trained_saved_and_kept_to(
    work: Path, lm_run: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from model.checkpoint import lm_config_from_kyutai
    from model.errors import ConfigError

    run = work / "lm_hears"
    with caplog.at_level(logging.WARNING):  # from a plain LM: allowed, and said
        train_lm(_lm_args(work, run, "--init", str(lm_run), "--monologue-hears", "--steps", "2"))
    assert "does not write down what it hears and this run's does" in caplog.text
    saved = json.loads((run / "config.json").read_text())
    assert saved["heard_text_ids"] == [1, 2]
    assert lm_config_from_kyutai(saved).heard_ids == (1, 2)
    plain = json.loads((lm_run / "config.json").read_text())
    assert "heard_text_ids" not in plain and lm_config_from_kyutai(plain).heard_ids is None
    with pytest.raises(ConfigError, match="started with --monologue-hears"):
        train_lm(_lm_args(work, run, "--steps", "3"))
    with pytest.raises(ConfigError, match="heard_text_ids must be two token ids"):
        lm_config_from_kyutai(saved | {"heard_text_ids": [1]})


def load_lm_state(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "lm.safetensors"))


def test_a_signal_stops_a_run_after_its_step_with_a_checkpoint(work: Path, lm_run: Path) -> None:
    out = work / "lm_signalled"
    argv = _lm_argv(work, out, "--steps", "100000", "--no-progress")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "app.train", *argv], env=env, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not (out / loop.LOG).is_file() or "step" not in (out / loop.LOG).read_text():
        assert process.poll() is None and time.monotonic() < deadline, "no step was logged"
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr  # stopped, not finished and not killed
    assert "run the same command again to continue" in stderr
    stopped = int(stderr.split("stopped at step ")[1].split(";")[0])
    saved = torch.load(out / loop.CHECKPOINT, weights_only=False)
    assert saved["step"] == stopped > 0  # the step it finished is the one saved


def test_stoppable_turns_the_first_signal_into_a_request_and_the_second_into_a_stop() -> None:
    # as in a terminal (a test run started in the background by a shell ignores SIGINT)
    ignored = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
        with loop.stoppable("test") as requested:
            assert not requested()
            os.kill(os.getpid(), signal.SIGTERM)
            assert requested()
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
        assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    finally:
        signal.signal(signal.SIGINT, ignored)


def test_lm_run_resumes_exactly(work: Path, lm_run: Path) -> None:
    resumed = work / "lm_resumed"
    assert train_lm(_lm_args(work, resumed, "--time-limit", "0")) == 1
    assert train_lm(_lm_args(work, resumed)) == 4
    assert _losses(resumed) == _losses(lm_run)


def test_a_run_on_sampled_depth_frames_resumes_exactly(work: Path, codec_run: Path) -> None:
    from model.errors import ConfigError

    share = ("--depth-share", "0.3")
    whole, resumed = work / "lm_share", work / "lm_share_resumed"
    assert train_lm(_lm_args(work, whole, *share)) == 4
    assert train_lm(_lm_args(work, resumed, *share, "--time-limit", "0")) == 1
    assert train_lm(_lm_args(work, resumed, *share)) == 4
    assert _losses(resumed) == _losses(whole)  # the frames drawn come from the saved generator
    with pytest.raises(ConfigError, match="--depth-share 0.0"):
        train_lm(_lm_args(work, work / "lm_share_bad", "--depth-share", "0"))


def test_runs_log_memory_speed_and_held_out_figures(codec_run: Path, lm_run: Path) -> None:
    for run, figure in ((codec_run, "stoi"), (lm_run, "text_acc"), (lm_run, "heard_acc")):
        rows = [json.loads(line) for line in (run / loop.LOG).read_text().splitlines()]
        steps = [row for row in rows if "loss" in row]
        assert all(row["peak_rss_gb"] > 0 and row["step_s"] > 0 for row in steps)
        assert steps[-1]["eta_s"] == 0
        held_out = [row["eval"] for row in rows if "eval" in row]
        assert held_out and all(figure in row for row in held_out)
    codec_eval = [json.loads(line) for line in (codec_run / loop.LOG).read_text().splitlines()]
    used = [row["eval"]["codes_used"] for row in codec_eval if "eval" in row][-1]
    assert len(used) == 4 and all(n >= 1 for n in used)


def test_a_run_keeps_its_held_out_best_weights(lm_run: Path, tmp_path: Path) -> None:
    rows = [json.loads(line) for line in (lm_run / loop.LOG).read_text().splitlines()]
    held_out = {row["step"]: answer_score(row["eval"]) for row in rows if "eval" in row}
    best = json.loads((lm_run / BEST / BEST_FIGURES).read_text())
    assert held_out[best["step"]] == max(held_out.values())  # the first of the best
    assert best["step"] == min(step for step, score in held_out.items() if score == best["score"])
    kept, last = load_lm_state(lm_run / BEST), load_lm_state(lm_run)
    assert (best["step"] == max(held_out)) == all(torch.equal(kept[k], last[k]) for k in kept)
    # a later evaluation replaces it only if better, also after a resume (best.json is read)
    lm = load_lm(lm_run / BEST / "lm.safetensors", lm_config_from_kyutai(
        json.loads((lm_run / BEST / "config.json").read_text())))  # fmt: skip
    folder = tmp_path / BEST
    assert keep_if_best(lm, folder, 2, {"answer_acc": 0.2, "answer_first_acc": 0.1})
    assert not keep_if_best(lm, folder, 4, {"answer_acc": 0.1, "answer_first_acc": 0.1})
    assert json.loads((folder / BEST_FIGURES).read_text())["step"] == 2
    assert keep_if_best(lm, folder, 6, {"answer_acc": 0.1, "answer_first_acc": 0.3})
    assert json.loads((folder / BEST_FIGURES).read_text())["score"] == 0.2
    assert answer_score({"text_acc": 0.5}) == 0.5  # dialogues without answers
    (folder / BEST_FIGURES).write_text('{"score": ')  # damaged: the run goes on, replacing it
    assert keep_if_best(lm, folder, 8, {"answer_acc": 0.0, "answer_first_acc": 0.0})
    assert json.loads((folder / BEST_FIGURES).read_text())["step"] == 8


def test_export_of_a_damaged_run_says_which_file(lm_run: Path, codec_run: Path, work: Path) -> None:
    from model.errors import CheckpointError

    damaged = work / "lm_damaged"
    shutil.copytree(lm_run, damaged)
    (damaged / "lm.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="lm.safetensors: missing, or not a whole"):
        export(codec_run, damaged, work / "tokenizer" / "tokenizer.model", work / "assets_bad")


def test_a_codec_with_dead_codes_is_refused() -> None:
    streams = [np.zeros((1 + 2 * 2, 30), dtype=np.int16)]
    streams[0][1] = np.arange(30)  # the first codebook lives, the second has one code
    assert codes_used(streams, 2) == [30, 1]
    with pytest.raises(Exception, match=r"codebooks \[1\] use only \[1\] of 64 codes"):
        check_live_codes(codes_used(streams, 2), 64)
    check_live_codes([30, 30], 64)  # alive: no complaint


def test_windows_are_batched_by_length() -> None:
    lengths = [13, 20, 24, 60, 61, 300, 410]
    streams = [np.full((3, n), i, dtype=np.int16) for i, n in enumerate(lengths)]
    sampler = WindowSampler(streams, frames=100, tokens=200, bucket=25)
    generator = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(200):
        batch = sampler.batch(generator)
        n, _, T = batch.shape
        assert n * T <= 200 and T in (25, 75, 100)
        for window in batch:
            index = int(window[0, 0])
            seen.add(index)
            real = (window[0] != -1).sum().item()
            assert real == min(lengths[index], T)  # whole dialogues, or crops of the longest
            assert T - real < 25  # padding: less than one bucket
    assert seen == set(range(len(lengths)))
    again = WindowSampler(streams, 100, 200, 25).batch(torch.Generator().manual_seed(0))
    assert torch.equal(again, WindowSampler(streams, 100, 200, 25).batch(
        torch.Generator().manual_seed(0)))  # fmt: skip


def test_user_noise_replaces_only_the_shares_of_the_users_codes_asked_for() -> None:
    config = tiny_lm(dep_q=2, n_q=4, text_card=40, card=64)  # text, 2 assistant, 2 user
    codes = torch.randint(0, 64, (4, 5, 500), generator=torch.Generator().manual_seed(1))
    codes[:, :, 450:] = -1  # past a dialogue's end: no input, and it stays so
    generator = torch.Generator().manual_seed(0)
    assert noisy_user_codes(codes, config, 0.0, 0.0, generator) is codes  # off: untouched
    noisy = noisy_user_codes(codes, config, 0.1, 0.6, generator)
    assert torch.equal(noisy[:, :3], codes[:, :3])  # text and the assistant's codes
    assert torch.equal(noisy[:, :, 450:], codes[:, :, 450:])
    assert noisy.min() >= -1 and noisy.max() < 64
    changed = (noisy != codes)[:, :, :450].float().mean(dim=(0, 2))  # per stream
    # a random code is the old one 1 time in 64
    assert changed[3].item() == pytest.approx(0.1 * 63 / 64, abs=0.02)
    assert changed[4].item() == pytest.approx(0.6 * 63 / 64, abs=0.02)


def test_the_allocator_is_tuned_for_the_loop_only() -> None:
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    assert loop.tune_allocator()


def test_trained_models_load_with_the_model_loaders_and_run_a_frame(
    work: Path, codec_run: Path, lm_run: Path
) -> None:
    config = lm_config_from_kyutai(json.loads((lm_run / "config.json").read_text()))
    lm = load_lm(lm_run / "lm.safetensors", config)
    state = torch.load(lm_run / loop.CHECKPOINT, weights_only=True)["model"]
    trained = {k.removeprefix("lm."): v for k, v in state.items() if k.startswith("lm.")}
    assert trained.keys() == lm.state_dict().keys()  # the training-only hearing head stays out
    assert any(k.startswith("hearing.") for k in state)
    assert all(torch.equal(lm.state_dict()[k], v) for k, v in trained.items())

    sizes = export(codec_run, lm_run, work / "tokenizer" / "tokenizer.model", work / "assets")
    assert set(sizes) == {
        "model.safetensors", "codec.safetensors", "tokenizer.model", "config.json", "codec.json"
    }  # fmt: skip
    files = bundle_files(work / "assets")
    assert files.lm_config == config
    assert files.codec_config == load_trained_codec(codec_run).config
    load_codec(files.codec_weights, files.codec_config)  # Kyutai-compatible names
    model = bundled_model(torch.device("cpu"), folder=work / "assets")
    engine = Engine(model)
    for _ in range(3):
        result = engine.step(np.zeros(engine.frame_size, dtype=np.float32))
    assert result.pcm.shape == (engine.frame_size,) and np.isfinite(result.pcm).all()
    assert -1 <= result.text_token < config.text_card

    # `--model DIR` (talk, run, serve) loads an export as the bundled model is loaded
    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    loaded = load_from_args(parser.parse_args(["--model", str(work / "assets"), "--device", "cpu"]))
    assert loaded.files == files and loaded.notice is not None and "exported in" in loaded.notice
    with pytest.raises(ConfigError, match="not a model folder"):
        load_from_args(parser.parse_args(["--model", str(work / "tokenizer"), "--device", "cpu"]))


@pytest.fixture
def one_thread():
    """Frame-by-frame stepping of a tiny model: threads only add synchronisation (and on a busy
    machine, spinning threads made this test ten times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_demo_eval_reports_every_figure(
    work: Path, codec_run: Path, lm_run: Path, one_thread: None
) -> None:
    assets = work / "assets"
    if not (assets / "config.json").is_file():
        export(codec_run, lm_run, work / "tokenizer" / "tokenizer.model", assets)
    fdb = work / "fdb"
    report = evaluate(
        bundled_model(torch.device("cpu"), folder=assets), work / "eval", 2, False, fdb
    )
    assert set(report["figures"]) == set(FIGURES)
    assert any(fdb.glob("*/*/input.wav")), "no request became a Full-Duplex-Bench sample"
    assert report["counts"]["dialogues"] == 2 and report["counts"]["requests_answered"] > 0
    for name, value in report["figures"].items():
        assert value is None or 0.0 <= value <= 1.0, name
    assert report["figures"]["codec_stoi"] is not None
    assert report["figures"]["answer_correct"] is not None

    # the model card is written from the run's records: a run folder laid out as
    # scripts/train_demo.sh lays it out
    run = work / "run"
    (run / "data").mkdir(parents=True)
    (run / "data" / "train").symlink_to(work / "data")
    (run / "codec").symlink_to(codec_run)
    (run / "lm").symlink_to(lm_run)
    (run / "lm-hear").symlink_to(lm_run)  # as if it were the hearing phase
    (run / "eval.json").write_text(json.dumps(report))
    text = card.write_card(run, assets, {"eval": "antiphon train eval ..."})
    assert "| codec | Mimi architecture" in text and "| 4 |" in text  # steps of both runs
    assert "| LM, hearing |" in text and "LM, hearing held-out figures" in text
    assert "| answer_correct |" in text and "antiphon train eval ..." in text
    assert f"{report['counts']['dialogues']} held-out dialogues" in text
    # its one line, with how often the model is right, is what `talk` says when it starts
    (assets / CARD_FILE).write_text(text)
    right = report["figures"]["answer_correct"]
    assert bundle_summary(assets) == card.summary_line(report)
    assert f"{right:.0%} right" in card.summary_line(report) or right >= 0.8
    assert bundled_model(torch.device("cpu"), folder=assets).notice == card.summary_line(report)
    # a model trained over several runs: its lineage, written by hand, replaces the table
    text = card.write_card(run, assets, {}, lineage="| stage | a chain of runs |")
    assert "| stage | a chain of runs |" in text and "| codec | Mimi architecture" not in text
    assert "| answer_correct |" in text


def test_the_keep_stage_commits_a_runs_weights_in_their_shipped_dtypes(
    work: Path, codec_run: Path, lm_run: Path, tmp_path: Path
) -> None:
    """scripts/train_demo.sh keep: the codec in fp16 and the LM in bf16, readable by all (what
    trained/ holds, and a wheel built from it keeps the mode)."""
    run = tmp_path / "run"
    run.mkdir()
    for name, target in (("codec", codec_run), ("lm", lm_run), ("tokenizer", work / "tokenizer")):
        (run / name).symlink_to(target)
    kept = tmp_path / "kept"
    env = {**os.environ, "RUN_DIR": str(run), "KEPT": str(kept), "CONFIG": "tiny",
           "PYTHON": sys.executable}  # fmt: skip
    script = Path(__file__).resolve().parents[3] / "scripts" / "train_demo.sh"
    done = subprocess.run(["bash", str(script), "keep"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for file, dtype in (
        ("codec/codec.safetensors", torch.float16),
        ("lm/lm.safetensors", torch.bfloat16),
    ):
        path = kept / file
        assert path.stat().st_mode & 0o777 == 0o644, file
        floats = {v.dtype for v in load_file(path).values() if v.is_floating_point()}
        assert floats == {dtype}, (file, floats)
    assert (kept / "tokenizer" / "tokenizer.model").is_file()
    assert (kept / "lm" / "config.json").is_file() and (kept / "codec" / "codec.json").is_file()


def test_a_time_budget_becomes_a_fixed_number_of_steps(tmp_path: Path) -> None:
    options = loop.LoopOptions(steps=None, checkpoint_every=10**6, time_limit_s=None, minutes=0.01)
    done_steps: list[int] = []

    def step(i: int) -> dict[str, float]:
        done_steps.append(i)
        return {"loss": 1.0}

    total = loop.train_loop(step, lambda done: None, 0, options, tmp_path, "test")
    assert options.steps is not None and options.steps % 100 == 0
    assert total == options.steps == len(done_steps) >= loop.PROBE_STEPS
    resumed = loop.LoopOptions(steps=None, checkpoint_every=1, time_limit_s=None, minutes=5.0)
    loop.resume_steps(resumed, {"steps": options.steps})
    assert resumed.steps == options.steps  # a resumed run keeps its schedule


@pytest.mark.parametrize("folder", ["codec", "codec-long"])
def test_the_committed_codec_and_tokenizer_load_and_encode(folder: str) -> None:
    """trained/ (what later training stages build on) holds codecs that load and encode with
    live codes, and the tokenizer they were trained beside."""
    from app.train.codec import load_trained_codec
    from model.tokenizer import TextTokenizer

    kept = Path(__file__).parents[3] / "trained"
    codec = load_trained_codec(kept / folder)
    pcm = torch.randn(1, 1, 25 * codec.frame_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        codes = codec.encode(0.1 * pcm)
    assert codes.shape == (1, codec.num_codebooks, 25)
    assert all(len(torch.unique(codes[0, k])) > 3 for k in range(codec.num_codebooks))
    assert TextTokenizer(kept / "tokenizer" / "tokenizer.model").vocab_size == 661


def test_the_committed_lm_so_far_loads_and_steps() -> None:
    """trained/lm (the LM stage as far as it got, what a new machine goes on from) loads with
    its own config, fits the committed codec and tokenizer, and takes a streaming step."""
    from model.sampling import SamplingParams

    kept = Path(__file__).parents[3] / "trained"
    config = lm_config_from_kyutai(json.loads((kept / "lm" / "config.json").read_text()))
    lm = load_lm(kept / "lm" / "lm.safetensors", config)
    codec = json.loads((kept / "codec" / "codec.json").read_text())
    assert (config.card, config.dep_q) == (codec["codebook_size"], codec["num_codebooks"])
    assert config.text_card == 661  # the committed tokenizer's pieces
    state = lm.init_state(1, SamplingParams(seed=0))
    with torch.no_grad():
        step = lm.step(torch.zeros(1, config.dep_q, 1, dtype=torch.long), state)
    assert step.text.shape == (1,)


def test_the_committed_teacher_loads_and_gives_a_state_per_codec_frame() -> None:
    """trained/teacher (fp16 on disk) loads frozen in fp32 and gives one state per 80 ms."""
    kept = Path(__file__).parents[3] / "trained" / "teacher"
    model = teacher.load_teacher(kept)
    assert all(not p.requires_grad and p.dtype == torch.float32 for p in model.parameters())
    pcm = torch.from_numpy(np.random.default_rng(0).normal(0, 0.1, 5 * 1920).astype(np.float32))
    with torch.no_grad():
        states = model.embed(pcm[None])
    assert states.shape == (1, 5, model.config.dim) and torch.isfinite(states).all()
    assert (
        model.config.classes
        == len(json.loads((kept / "phonemes.json").read_text())["inventory"]) + 1
    )


@pytest.fixture(scope="module")
def teacher_run(work: Path) -> Path:
    out = work / "teacher"
    args = _args(
        "teacher", "--data", work / "data", "--out", out, "--steps", "30", "--batch-size", "4",
        "--dim", "32", "--layers", "1", "--lr", "3e-3", "--warmup", "1", "--log-every", "1",
        "--eval-data", work / "eval", "--eval-every", "30", "--seconds", "1.5",
    )  # fmt: skip
    teacher.train_teacher(args)
    return out


def test_a_finished_teacher_gives_its_figures_on_more_held_out_dialogues(
    work: Path, teacher_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _args(
        "teacher", "--data", work / "data", "--out", teacher_run, "--steps", "30",
        "--dim", "32", "--layers", "1", "--eval-data", work / "eval", "--eval-count", "1",
    )  # fmt: skip
    assert teacher.train_teacher(args) == 30  # nothing left to train
    assert "held-out phoneme error rate, 1 dialogues: {'per': " in capsys.readouterr().out


def test_the_teacher_learns_phonemes_and_hears_only_the_past(teacher_run: Path) -> None:
    losses = _losses(teacher_run)
    assert len(losses) == 30 and np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    lines = [json.loads(line) for line in (teacher_run / loop.LOG).read_text().splitlines()]
    figures = [line["eval"] for line in lines if "eval" in line][-1]
    assert set(figures) == {"per", "per_training_voices", "per_new_voice"}
    assert all(np.isfinite(v) and v >= 0 for v in figures.values())
    model = teacher.load_teacher(teacher_run)
    pcm = torch.from_numpy(np.random.default_rng(0).normal(0, 0.1, 10 * 1920).astype(np.float32))
    with torch.no_grad():
        whole, prefix = model.embed(pcm[None]), model.embed(pcm[None, : 6 * 1920])
    assert whole.shape == (1, 10, 32) and prefix.shape == (1, 6, 32)  # one per codec frame
    # A frame's state depends on nothing later than 20 ms past the frame: the first five of
    # the prefix's frames are those of the whole (the sixth's last window overhangs the cut).
    torch.testing.assert_close(prefix[:, :5], whole[:, :5], atol=1e-5, rtol=1e-5)


def test_spec_augment_hides_bands_and_stretches_and_nothing_else() -> None:
    x = torch.randn(3, 64, 120) + 5.0  # no feature is 0 by chance
    assert torch.equal(teacher.spec_augment(x, 0, None), x)
    masked = teacher.spec_augment(x, 2, torch.Generator().manual_seed(1))
    again = teacher.spec_augment(x, 2, torch.Generator().manual_seed(1))
    assert torch.equal(masked, again)  # seeded: a resumed run masks the same
    hidden = masked == 0
    for b in range(3):
        bands = hidden[b].all(dim=1)  # mel bins hidden in every frame
        frames = hidden[b].all(dim=0)  # frames hidden in every bin
        # every hidden feature lies in a hidden band or a hidden stretch, the rest as it was
        assert torch.equal(hidden[b], bands[:, None] | frames[None, :])
        assert torch.equal(masked[b][~hidden[b]], x[b][~hidden[b]])
        assert int(bands.sum()) <= 2 * teacher.MASK_BINS
        assert int(frames.sum()) <= 2 * min(teacher.MASK_FRAMES, 120 // 10)
    assert hidden.any()  # over three crops something was hidden
    short = torch.randn(1, 64, 9) + 5.0  # under ten frames: bands only, never a stretch
    assert not (teacher.spec_augment(short, 2, torch.Generator().manual_seed(0)) == 0).all(1).any()


def test_ctc_decoding_and_the_phoneme_error_rate() -> None:
    logits = torch.full((6, 4), -5.0)
    for t, p in enumerate([2, 2, 0, 2, 3, 0]):
        logits[t, p] = 5.0
    assert teacher.greedy(logits, 6) == [2, 2, 3]  # a blank separates a doubled phoneme
    assert teacher.greedy(logits, 2) == [2]
    assert edit_distance([1, 2, 3], [1, 3]) == 1
    assert edit_distance([], [4, 5]) == 2


def test_the_codec_learns_the_teachers_states_and_ships_without_the_head(
    work: Path, codec_run: Path, teacher_run: Path
) -> None:
    out = work / "codec-teacher"
    args = _codec_args(work, out, "--init", str(codec_run), "--teacher", str(teacher_run))
    args.steps, args.lr, args.warmup, args.eval_every = 30, 3e-3, 1, 30
    train_codec(args)
    lines = [json.loads(line) for line in (out / loop.LOG).read_text().splitlines()]
    losses = [line["distill"] for line in lines if "distill" in line]
    assert len(losses) == 30 and np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    figures = [line["eval"] for line in lines if "eval" in line][-1]
    assert -1 <= figures["distill_cos"] <= 1 and "distill_cos_new_voice" in figures
    state = torch.load(out / loop.CHECKPOINT, weights_only=True)["model"]
    assert any(k.startswith("distill.") for k in state)
    assert set(load_trained_codec(out).state_dict()) == set(
        load_trained_codec(codec_run).state_dict()
    )
    with pytest.raises(ConfigError, match="train teacher"):
        train_codec(_codec_args(work, work / "codec-no-teacher", "--teacher", str(work)))


def test_a_resumed_run_with_other_options_is_refused_by_name(tmp_path: Path) -> None:
    from app.train.loop import check_same_options
    from model.errors import ConfigError

    started = {"options": {"lr": 0.001, "monologue_hears": True, "user_noise": [0.1, 0.5]}}
    check_same_options(tmp_path, started, dict(started["options"]))  # the same: goes on
    check_same_options(tmp_path, {"steps": 9}, {"lr": 0.5})  # kept no options: not checked
    now = {"lr": 0.002, "monologue_hears": False, "user_noise": [0.1, 0.5]}
    with pytest.raises(ConfigError) as refused:
        check_same_options(tmp_path, started, now)
    assert str(refused.value) == (
        f"{tmp_path} was started with --lr 0.001, --monologue-hears; now --lr 0.002, without "
        "--monologue-hears: continue it with the options it started with, or start a new --out"
    )
