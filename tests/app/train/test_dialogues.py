"""Synthetic dialogues: espeak-ng word timings, the fixed split, the files, the aligned text."""

import json
import logging
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from tqdm import tqdm

from app.train import content
from app.train.answers import normalise
from app.train.dialogues import (
    ASSISTANT,
    USER,
    Dialogue,
    _high_pass,
    _make_blocks,
    generate,
    manifest_rows,
    read_description,
    read_dialogue,
    read_manifest,
    write_dialogue,
)
from app.train.monologue import heard_tokens, hearing_text_tokens, text_tokens
from app.train.speech import SAMPLE_RATE, SpeechError, Voice, speak, synthesizer
from model.errors import ConfigError


def require_espeak() -> None:
    try:
        synthesizer()
    except SpeechError as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))


def test_words_are_timed_inside_one_natural_utterance() -> None:
    require_espeak()
    text = "Hello! Seven plus five is twelve."
    utterance = speak(text, Voice("en-us", "m3"))
    assert [w.text for w in utterance.words] == text.split(" ")
    starts = [w.start for w in utterance.words]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)
    assert all(w.start <= w.end <= utterance.duration for w in utterance.words)
    # The pause after "Hello!" is inside the utterance, between the two words' times.
    assert utterance.words[1].start - utterance.words[0].end > 0.1
    # A word's time is where its sound is: the frames before "Seven" starts are quieter.
    i = int(utterance.words[1].start * SAMPLE_RATE)
    gap = utterance.pcm[int(utterance.words[0].end * SAMPLE_RATE) + 480 : i - 480]
    word = utterance.pcm[i : i + 2400]
    assert np.sqrt(np.mean(gap**2)) < 0.2 * np.sqrt(np.mean(word**2))


def test_a_shorter_vocal_tract_raises_the_voice_at_the_same_pace() -> None:
    require_espeak()
    text = "Hey, what is seven plus five?"
    plain, higher = (speak(text, Voice("en-us", "m3", tract=t)) for t in (1.0, 1.25))

    def centroid(pcm: np.ndarray) -> float:
        power = np.abs(np.fft.rfft(pcm)) ** 2
        return float(np.sum(np.fft.rfftfreq(len(pcm), 1 / SAMPLE_RATE) * power) / np.sum(power))

    assert 1.12 < centroid(higher.pcm) / centroid(plain.pcm) < 1.38  # the spectrum moved up
    assert 0.85 < higher.duration / plain.duration < 1.15  # said as fast
    assert [w.text for w in higher.words] == [w.text for w in plain.words]
    assert all(0 <= w.start <= w.end <= higher.duration + 1e-6 for w in higher.words)


def test_every_voice_of_both_splits_exists() -> None:
    require_espeak()
    lib = synthesizer()._lib
    for accent in content.ACCENTS:
        for variant in content.VARIANTS:
            assert lib.espeak_SetVoiceByName(f"{accent}+{variant}".encode()) == 0, (
                accent,
                variant,
            )


def require_cmu() -> None:
    import shutil

    missing = [p for p in ("flite", "festival") if shutil.which(p) is None]
    if missing:
        message = f"{', '.join(missing)} not installed (bash scripts/setup.sh --dev)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.mark.parametrize(
    "voice",
    [Voice(v, engine="flite") for v in (*content.FLITE_VOICES, "rms")]
    + [Voice(v, engine="festival") for v in content.FESTIVAL_VOICES]
    + list(content.HELD_OUT_VOICES),
    ids=lambda v: v.name,
)
def test_flite_and_festival_voices_speak_with_word_timings(voice: Voice) -> None:
    require_cmu()
    text = "Hey, what is seven plus 5?"
    utterance = speak(text, voice)
    assert [w.text for w in utterance.words] == text.split(" ")
    starts = [w.start for w in utterance.words]
    assert starts == sorted(starts) and starts[-1] > starts[0]
    assert all(w.start <= w.end <= utterance.duration + 1e-6 for w in utterance.words)
    assert 0.8 < utterance.duration < 4.0
    # every word is where its sound is
    level = np.sqrt(np.mean(utterance.pcm**2))
    for word in utterance.words:
        span = utterance.pcm[int(word.start * SAMPLE_RATE) : int(word.end * SAMPLE_RATE)]
        assert len(span) > 0.05 * SAMPLE_RATE and np.sqrt(np.mean(span**2)) > 0.3 * level


def test_the_split_holds_out_phrasings_numbers_and_voices() -> None:
    train_problems = set(content.arithmetic_problems("train"))
    eval_problems = set(content.arithmetic_problems("eval"))
    assert eval_problems and not train_problems & eval_problems
    train_ranges = content.counting_ranges("train")
    assert not set(train_ranges) & set(content.counting_ranges("eval"))
    # a random hold-out, not a residue class: training counts end on 7, 12, 17 too
    assert set(range(3, 21)) <= {b for _, b in train_ranges}
    assert not set(content.comparison_pairs("train")) & set(content.comparison_pairs("eval"))
    for intent in content.PHRASINGS:
        assert len(content.PHRASINGS[intent]) >= 20
        train_cores, eval_cores = (
            content.phrasings(intent, "train"),
            content.phrasings(intent, "eval"),
        )
        assert eval_cores and not set(train_cores) & set(eval_cores)
    rng = np.random.default_rng(0)
    train_questions = {content.request(rng, "train").question for _ in range(3000)}
    assert len(train_questions) > 2000  # composed: openers, cores, numbers
    voices = [content.user_voice(rng, "train") for _ in range(500)]
    assert {v.engine for v in voices} == {"espeak", "flite", "festival"}
    assert not any(content.is_held_out(v) for v in voices)
    assistant = content.ASSISTANT_VOICE
    assert not any((v.engine, v.language) == (assistant.engine, assistant.language) for v in voices)
    low, high = content.TRACT_RANGE  # every training speaker resampled, held-out ones never
    assert all(low <= v.tract <= high for v in voices) and np.std([v.tract for v in voices]) > 0.1
    eval_voices = [content.user_voice(rng, "eval") for _ in range(200)]
    assert 0.35 < np.mean([content.is_held_out(v) for v in eval_voices]) < 0.65
    assert all(v.tract == 1.0 for v in eval_voices)


def test_answers_are_what_their_check_accepts() -> None:
    rng = np.random.default_rng(1)
    for split in ("train", "eval"):
        for _ in range(200):
            turn = content.request(rng, split)
            spoken = normalise(turn.answer)
            assert any(f" {a} " in spoken for a in turn.accept), turn
            assert turn.answer in turn.answers and turn.answer not in turn.distractors


def test_generated_dialogues_are_reproducible_and_teach_the_behaviours(tmp_path: Path) -> None:
    require_espeak()
    rows = generate(tmp_path / "a", 4, seed=3, split="train", progress=False, block=2)
    again = generate(tmp_path / "b", 4, seed=3, split="train", workers=2, progress=False, block=2)
    grown = tmp_path / "c"  # grown 2 -> 3 (half of the second block) -> 4
    generate(grown, 2, seed=3, split="train", progress=False, block=2)
    assert generate(grown, 3, seed=3, split="train", progress=False, block=2) == rows[:3]
    written = [(grown / row["path"]).stat().st_mtime_ns for row in rows[:3]]
    assert generate(grown, 4, seed=3, split="train", progress=False, block=2) == rows
    assert [(grown / row["path"]).stat().st_mtime_ns for row in rows[:3]] == written  # not again
    with pytest.raises(ConfigError, match="lists dialogues up to 4"):  # a smaller count drops none
        generate(grown, 2, seed=3, split="train", progress=False, block=2)
    (grown / "manifest.jsonl").unlink()  # a run stopped before it listed what it wrote
    assert generate(grown, 4, seed=3, split="train", progress=False, block=2) == rows
    assert [(grown / row["path"]).stat().st_mtime_ns for row in rows[:3]] == written  # not again
    assert rows == again
    for row in rows:
        first, second, third = (tmp_path / d / row["path"] for d in ("a", "b", "c"))
        assert first.read_bytes() == second.read_bytes() == third.read_bytes()
        assert first.with_suffix(".json").read_text() == third.with_suffix(".json").read_text()
    described = grown / Path(rows[0]["path"]).with_suffix(".json")
    made_by_another = json.loads(described.read_text()) | {"generator": 99}
    described.write_text(json.dumps(made_by_another))
    with pytest.raises(ConfigError, match="generator version 99"):  # never mixed
        generate(grown, 6, seed=3, split="train", progress=False, block=2)
    assert generate(grown, 4, seed=3, split="train", progress=False, block=2) == rows  # kept
    # one the synthesizer crashed on is not listed: the older folder is still whole, left alone
    manifest = (grown / "manifest.jsonl").read_text().splitlines(keepends=True)
    (grown / "manifest.jsonl").write_text(manifest[0] + "".join(manifest[2:]))
    (grown / rows[1]["path"]).unlink()
    kept = generate(grown, 4, seed=3, split="train", progress=False, block=2)
    assert kept == [rows[0], *rows[2:]] and not (grown / rows[1]["path"]).exists()
    with pytest.raises(ConfigError, match="seed 3"):  # dialogue i of seed 4 is another one
        generate(grown, 6, seed=4, split="train", progress=False, block=2)

    kinds = set()
    for row in rows:
        stereo, description = read_dialogue(tmp_path / "a" / row["path"])
        assert stereo.shape[0] == 2
        assert abs(stereo.shape[1] - row["duration"] * SAMPLE_RATE) <= 24  # ms rounding
        assistant = stereo[0]
        for turn in description["turns"]:
            kinds.add(turn["kind"])
            if turn["assistant_start"] is None:
                continue
            # Silent while the user asks (the pause included), then answers 0.2-0.6 s later.
            a, b = int(turn["user_start"] * SAMPLE_RATE), int(turn["user_end"] * SAMPLE_RATE)
            assert turn["kind"] == "interrupt" or np.abs(assistant[a:b]).max() < 1e-3
            assert 0.2 <= turn["assistant_start"] - turn["user_end"] <= 0.6
            if turn["kind"] == "interrupt":
                assert 0.15 <= turn["assistant_end"] - turn["interrupted_at"] <= 0.4
        words = [w for w in description["alignments"] if w[2] == ASSISTANT]
        assert words and all(w[1][0] <= w[1][1] for w in words)
        assert any(w[2] == USER for w in description["alignments"])
    assert "answer" in kinds
    json.dumps(description)  # plain JSON
    assert manifest_rows(tmp_path / "a") == rows
    assert read_manifest(tmp_path / "a") == [tmp_path / "a" / row["path"] for row in rows]


def test_the_high_pass_is_a_causal_butterworth_filter() -> None:
    """The augmentation's high-pass (applied by FFT) equals the biquads' difference equations,
    is -3 dB at its cutoff, and nothing comes out before what goes in."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(3000).astype(np.float32)
    cutoff, order = 150.0, 4
    y = x.astype(np.float64)
    w0 = 2 * np.pi * cutoff / SAMPLE_RATE
    for k in range(order // 2):  # the same sections, sample by sample
        q = 1 / (2 * np.cos(np.pi * (2 * k + 1) / (2 * order)))
        alpha, c = np.sin(w0) / (2 * q), np.cos(w0)
        b = np.array([1, -2, 1]) * (1 + c) / 2 / (1 + alpha)
        a1, a2 = -2 * c / (1 + alpha), (1 - alpha) / (1 + alpha)
        out, (x1, x2, y1, y2) = np.zeros_like(y), (0.0, 0.0, 0.0, 0.0)
        for n, xn in enumerate(y):
            out[n] = b[0] * xn + b[1] * x1 + b[2] * x2 - a1 * y1 - a2 * y2
            x1, x2, y1, y2 = xn, x1, out[n], y1
        y = out
    np.testing.assert_allclose(_high_pass(x, cutoff, order), y, atol=1e-4)
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    for hz, gain in ((cutoff, 2**-0.5), (8 * cutoff, 1.0), (cutoff / 4, 4.0**-4)):
        tone = np.sin(2 * np.pi * hz * t).astype(np.float32)
        level = np.sqrt(2 * np.mean(_high_pass(tone, cutoff, order)[SAMPLE_RATE // 2 :] ** 2))
        assert level == pytest.approx(gain, rel=0.02, abs=1e-3)
    impulse = np.zeros(SAMPLE_RATE, np.float32)
    impulse[1000] = 1.0
    response = _high_pass(impulse, cutoff, order)
    assert np.abs(response[:1000]).max() < 1e-6 and response[1000] > 0.9


def test_a_damaged_description_or_manifest_is_named_with_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "manifest.jsonl").write_text('{"path": "a.wav", "duration": 1.0}\n{"path": "b.w')
    with pytest.raises(ConfigError, match=r"manifest\.jsonl: cannot read it .*`train data`"):
        read_manifest(tmp_path)
    (tmp_path / "a.json").write_text('{"turns": [], "alignm')
    with pytest.raises(ConfigError, match=r"a\.json: cannot read it .*`train data`"):
        read_description(tmp_path / "a.wav")
    (tmp_path / "a.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="not a dialogue description"):
        read_description(tmp_path / "a.wav")
    with pytest.raises(ConfigError, match=r"missing\.json: cannot read it"):
        read_description(tmp_path / "missing.wav")


def test_dialogues_are_flac_and_earlier_wav_folders_read_the_same(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    speech = (rng.standard_normal((2, SAMPLE_RATE)) * 0.1).astype(np.float32)
    dialogue = Dialogue(speech[0], speech[1], [("Hi.", 0.1, 0.3, USER)], [], {"split": "train"})
    write_dialogue(dialogue, tmp_path / "train_000000.flac")  # what `train data` writes now
    write_dialogue(dialogue, tmp_path / "train_000001.wav")  # what earlier antiphons wrote
    flac = tmp_path / "train_000000.flac"
    assert flac.stat().st_size < (tmp_path / "train_000001.wav").stat().st_size
    assert read_manifest(tmp_path) == [flac, tmp_path / "train_000001.wav"]  # no manifest
    (pcm_flac, about), (pcm_wav, _) = (read_dialogue(path) for path in read_manifest(tmp_path))
    # lossless: the samples rounded to 16 bits (libsndfile's WAV writer is within one step)
    np.testing.assert_array_equal(pcm_flac, np.round(speech * 32768) / 32768)
    np.testing.assert_allclose(pcm_wav, pcm_flac, rtol=0, atol=1.01 / 32768)
    assert about["alignments"] == [["Hi.", [0.1, 0.3], USER]]


def test_text_tokens_place_words_at_their_frames_with_end_of_padding() -> None:
    vocabulary = {"Seven": [10], "plus": [11], "fifteen.": [12, 13, 14], "Yes.": [15]}
    words = [
        ["Seven", [0.0, 0.3], ASSISTANT],
        ["plus", [0.33, 0.5], ASSISTANT],
        ["fifteen.", [0.5, 0.9], ASSISTANT],
        ["ignored", [0.1, 0.2], USER],
        ["Yes.", [1.6, 1.9], ASSISTANT],
    ]
    tokens = text_tokens(words, lambda w: vocabulary[w], 24, frame_rate=12.5)
    # frame 0: Seven (no frame before it); plus starts in frame 4 (0.33 s), preceded by PAD,
    # which becomes end-of-padding; fifteen starts in frame 6 and runs on for three frames;
    # Yes starts in frame 20.
    P, E = 3, 0
    assert tokens == [10, P, P, E, 11, E, 12, 13, 14] + [P] * 10 + [E, 15, P, P, P]


def test_heard_words_come_after_the_user_has_said_them() -> None:
    """The hearing head's targets: the user's words only, each queued `delay_frames` after the
    frame in which it ends (a listener writes a word down once it has heard all of it)."""
    vocabulary = {"Add": [20], "four": [21, 22], "That": [30]}
    words = [
        ["Add", [0.1, 0.35], USER],  # ends in frame 4 (0.35 s): written from frame 6
        ["four", [0.4, 0.95], USER],  # ends in frame 11: written from frame 13, on into 14
        ["That", [0.5, 0.7], ASSISTANT],  # the assistant's words are not heard ones
    ]
    tokens = heard_tokens(words, lambda w: vocabulary[w], 18, frame_rate=12.5, delay_frames=2)
    P, E = 3, 0
    assert tokens == [P] * 5 + [E, 20] + [P] * 5 + [E, 21, 22] + [P] * 3


def test_a_monologue_that_hears_writes_the_users_words_where_the_assistant_is_silent() -> None:
    """`train lm --monologue-hears`: the user's words where `heard_tokens` puts them, between
    open (1) and close (2); the assistant's frames stay its own, and what the user says while
    the assistant speaks is not written."""
    vocabulary = {"Add": [20], "four": [21, 22], "Four.": [30], "stop": [40], "bye": [50]}
    words = [
        ["Add", [0.1, 0.35], USER],  # written from frame 6, opened in frame 5
        ["four", [0.4, 0.95], USER],  # frames 13 and 14; "bye" is due soon: no close yet
        ["Four.", [1.6, 1.7], ASSISTANT],  # frame 20, end-of-padding in 19: it ends the stretch
        ["bye", [1.45, 1.5], USER],  # due in frame 20, the assistant's: dropped
        ["stop", [1.55, 1.6], USER],  # due in frame 22, the assistant is done: written
    ]
    tokens = hearing_text_tokens(words, lambda w: vocabulary[w], 26, delay_frames=2)
    P, E, OPEN, C = 3, 0, 1, 2
    heard = [P] * 5 + [OPEN, 20] + [P] * 6 + [21, 22] + [P] * 4
    assert tokens == heard + [E, 30] + [OPEN, 40, C] + [P] * 2
    # the plain monologue is the same where the assistant speaks
    plain = text_tokens(words, lambda w: vocabulary[w], 26)
    assert [t for t in tokens if t in (E, 30)] == [t for t in plain if t in (E, 30)]


def test_words_queue_when_they_come_faster_than_frames() -> None:
    words = [["a", [0.0, 0.01], ASSISTANT], ["b", [0.02, 0.03], ASSISTANT]]
    assert text_tokens(words, lambda w: [ord(w)], 4) == [ord("a"), ord("b"), 3, 3]


def _crashes_making_dialogue_2(job: tuple) -> None:
    """`_generate_block`, but the process dies (SIGSEGV, as espeak-ng can) making dialogue 2."""
    from app.train import dialogues

    out, first, make = Path(job[0]), job[3], dialogues.make_dialogue

    def crashing(rng, split):
        if (out / f".making-{first}").read_text() == "2":
            os.kill(os.getpid(), signal.SIGSEGV)
        return make(rng, split)

    dialogues.make_dialogue = crashing
    dialogues._generate_block(job)


def test_a_dialogue_that_crashes_the_synthesizer_is_left_out(tmp_path: Path, caplog) -> None:
    require_espeak()
    bar = tqdm(disable=True)
    with caplog.at_level(logging.WARNING):
        made = _make_blocks(
            tmp_path, 3, "train", [(0, 2), (2, 4)], set(), 2, bar, _crashes_making_dialogue_2
        )
    assert [row["path"] for row in made[0]] == ["train_000000.flac", "train_000001.flac"]
    assert [row["path"] for row in made[2]] == ["train_000003.flac"]  # 2 left out, 3 made
    assert "dialogue 2: the synthesizer crashed making it (signal 11)" in caplog.text
    assert not list(tmp_path.glob(".making-*")) and not list(tmp_path.glob(".rows-*"))
    reference = generate(tmp_path / "whole", 4, seed=3, split="train", progress=False, block=2)
    assert made[0] == reference[:2]  # the others are the dialogues they always are
    assert (tmp_path / "train_000000.flac").read_bytes() == (
        tmp_path / "whole" / "train_000000.flac"
    ).read_bytes()


def _fails(job: tuple) -> None:
    raise ValueError("a synthesizer error of its own")


def test_a_block_that_fails_with_an_error_stops_the_run(tmp_path: Path) -> None:
    with pytest.raises(SpeechError, match=r"dialogues 0\.\.1 failed \(exit code 1\)"):
        _make_blocks(tmp_path, 3, "train", [(0, 2)], set(), 1, tqdm(disable=True), _fails)
