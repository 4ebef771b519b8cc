"""The demo evaluation's figures, checked on the dialogues' own assistant channel: a model that
says and writes exactly what the data says scores perfectly."""

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.train import content
from app.train.answers import answer_kind, answer_right
from app.train.dialogues import ASSISTANT, generate, read_dialogue, read_manifest
from app.train.paired import format_paired, paired, read_report
from app.train.quality import (
    Session,
    _answer_onset,
    _answer_text,
    _Renderings,
    rejudged,
    score_dialogue,
    summarize,
)
from model import SamplingParams
from model.errors import ConfigError
from tests.app.train.test_dialogues import require_espeak


def test_the_recorded_assistant_scores_perfectly(tmp_path: Path) -> None:
    require_espeak()
    generate(tmp_path, 4, seed=2, split="eval", progress=False)
    results = []
    renderings = _Renderings()
    for wav in read_manifest(tmp_path):
        stereo, description = read_dialogue(wav)
        assistant = np.pad(stereo[0], (0, -len(stereo[0]) % 1920))
        monologue = [
            (int(start / 0.08), " " + word)
            for word, (start, _), speaker in description["alignments"]
            if speaker == ASSISTANT
        ]
        results.append(score_dialogue(Session(assistant, monologue, 0.08), description, renderings))
    report = summarize(results)
    figures = report["figures"]
    assert report["counts"]["requests_answered"] >= 4
    for name in ("answer_correct", "answered", "answer_kind_right", "audio_matches",
                 "audio_says_text", "answers_within_1s"):  # fmt: skip
        assert figures[name] == 1.0, name
    assert figures["silent_while_user"] > 0.9  # an interrupted answer overlaps the user a little
    for name in ("pause_kept_silent", "stops_within_0_5s"):
        assert figures[name] in (None, 1.0), name
    # A model that says nothing answers nothing.
    silent = Session(np.zeros_like(assistant), [], 0.08)
    nothing = summarize([score_dialogue(silent, description, renderings)])["figures"]
    assert nothing["answers_within_1s"] == 0.0 and nothing["silent_while_user"] == 1.0
    assert nothing["answered"] == 0.0 and nothing["answer_kind_right"] == 0.0
    assert nothing["heard_wer"] is None  # a model that writes nothing down of what it hears
    # A model that writes down every word the user said, 2 frames after it ends, heard all;
    # one that wrote "four" for every word heard one word in a request at best.
    user = [(w, end) for w, (_, end), who in description["alignments"] if who != ASSISTANT]
    heard = [(int(end / 0.08) + 2, " " + word) for word, end in user]
    perfect = score_dialogue(Session(assistant, [], 0.08, heard, True), description, renderings)
    assert summarize([perfect])["figures"]["heard_wer"] == 0.0
    wrong = [(frame, " four") for frame, _ in heard]
    scored = score_dialogue(Session(assistant, [], 0.08, wrong, True), description, renderings)
    assert all(r["heard"].startswith("four four") for r in scored["requests"] if "heard" in r)
    assert summarize([scored])["figures"]["heard_wer"] > 0.6
    deaf = score_dialogue(Session(assistant, [], 0.08, [], True), description, renderings)
    assert summarize([deaf])["figures"]["heard_wer"] == 1.0  # writing nothing is every word


def test_a_yes_or_no_is_right_only_about_the_question_asked() -> None:
    compare = content.request(np.random.default_rng(0), "eval", "compare")
    request = {"intent": "compare", "accept": compare.accept, "answers": compare.answers}
    assert answer_right(compare.answers[0], request)
    yes_or_no = compare.accept[0].capitalize()
    assert not answer_right(f"{yes_or_no}, three is smaller than thirteen.", request)
    fact = {"intent": "fact", "accept": ("no",), "answers": ("No, a car cannot swim.",)}
    assert answer_right(" no, a car cannot swim", fact)
    assert not answer_right("No, a dog cannot fly.", fact)
    spell = {
        "intent": "spell",
        "accept": ("c a t",),
        "answers": ("Cat is spelled C, A, T.", "C, A, T."),
    }
    assert answer_right("Cat is spelled C, A, T.", spell) and not answer_right("C, A, R.", spell)


def _asked(turn: content.Turn) -> dict:
    return {"intent": turn.intent, "accept": turn.accept, "answers": turn.answers}


def test_an_answer_is_right_only_whole_and_first() -> None:
    """The first sentence is the answer, and it must be a right one whole: not a count that
    goes on or starts early, a longer number, an extra letter, or a right answer after a
    wrong one. Every distractor of every intent is wrong."""
    rng = np.random.default_rng(3)
    for intent in content.INTENTS:
        for _ in range(20):
            turn = content.request(rng, "eval", intent)
            asked = _asked(turn)
            for answer in turn.answers:
                assert answer_right(answer, asked), answer
                assert answer_right(f" {answer} Goodbye!", asked), answer  # then something else
            if intent not in ("greeting", "farewell", "name"):  # theirs: other intents' words
                for wrong in turn.distractors:
                    assert not answer_right(wrong, asked), (turn.question, wrong)
                    assert not answer_right(f"{wrong} {turn.answers[0]}", asked), wrong
    count = {"intent": "count", "accept": ("five six seven",), "answers": ("Five, six, seven.",)}
    assert not answer_right("Five, six, seven, eight.", count)  # one number late
    assert not answer_right("Four, five, six, seven.", count)  # one early
    assert answer_right("five, six, seven", count)  # cut at the window's end: all said
    tens = {"intent": "arithmetic", "accept": ("is twenty",),
            "answers": ("Five times four is twenty.", "That is twenty.")}  # fmt: skip
    assert not answer_right("Five times four is twenty one.", tens)
    assert not answer_right("That is twenty one.", tens) and answer_right("That is twenty!", tens)
    spell = {"intent": "spell", "accept": ("c a t",), "answers": ("C, A, T.",)}
    assert not answer_right("C, A, T, S.", spell)
    hello = {"intent": "greeting", "accept": ("hello", "hi"), "answers": ("Hello there!",)}
    assert answer_right("Hi! What can I do for you?", hello)
    assert not answer_right("That is two. Hello!", hello)  # the greeting came second


def test_every_answer_form_is_told_as_its_intents_kind() -> None:
    rng = np.random.default_rng(0)
    for intent in content.INTENTS:
        for split in ("train", "eval"):
            for _ in range(30):
                turn = content.request(rng, split, intent)
                for answer in turn.answers:
                    assert answer_kind(answer) == intent, (intent, answer)
                if intent not in ("greeting", "farewell", "name"):  # theirs: other intents'
                    for other in turn.distractors:  # wrong answers of the same form
                        assert answer_kind(other) == intent, (intent, other)
    assert answer_kind("") is None and answer_kind("Mm.") is None
    assert answer_kind("Hello! Four plus five is nine.") == "greeting"  # the first sentence
    for bare in ("Forty two.", "Nine.", "That's nine."):  # a sum's result alone, not a count
        assert answer_kind(bare) == "arithmetic", bare
    assert answer_kind("Nineteen, twenty, twenty one") == "count"


def test_a_batch_of_dialogues_runs_each_as_it_would_run_alone() -> None:
    """run_dialogues (the eval's batch) against run_dialogue (one at a time), on a random tiny
    model with sampling on: dialogues of different lengths, more of them than slots, so that
    slots are reused; each gives the same audio and text as it does alone."""
    import torch

    from app.core.engine import Engine
    from app.core.models import random_model
    from app.train.quality import run_dialogue, run_dialogues

    torch.manual_seed(0)
    model = random_model(torch.device("cpu"), SamplingParams(seed=5), seed=3)
    rng = np.random.default_rng(0)
    users = [
        (0.1 * rng.standard_normal(frames * 1920 - cut)).astype(np.float32)
        for frames, cut in ((7, 0), (3, 100), (11, 0), (5, 1919), (4, 0))
    ]
    alone = [run_dialogue(Engine(model), user) for user in users]
    assert all(session.texts for session in alone)  # something to compare
    batched = dict(run_dialogues(model, users, slots=2))
    assert sorted(batched) == list(range(len(users)))
    for index, session in batched.items():
        expected = alone[index]
        assert len(session.assistant) == len(expected.assistant)
        np.testing.assert_allclose(session.assistant, expected.assistant, atol=1e-5)
        assert session.texts == expected.texts


def _report(rights: list[list[bool | None]], suffix: str = ".wav") -> dict:
    """A report's dialogues: per request, right, wrong, or None (not a question)."""
    return {
        "dialogues": [
            {
                "file": f"eval_{i:06d}{suffix}",
                "requests": [
                    {"kind": "stop", "question": "stop"}
                    if r is None
                    else {"question": f"question {i}.{k}", "answer_correct": r}
                    for k, r in enumerate(d)
                ],
            }
            for i, d in enumerate(rights)
        ]
    }


def test_two_models_are_compared_request_by_request(tmp_path: Path) -> None:
    # ten requests only the new one answers, none only the old: p = 2 / 2**10
    new = _report([[True, None, True]] * 5 + [[False]] * 3 + [[True]] * 2)
    old = _report([[False, None, False]] * 5 + [[False]] * 3 + [[True]] * 2, suffix=".flac")
    comparison = paired(new, old)  # the same dialogues, whatever their audio files' format
    assert comparison == {
        "requests": 15, "both_right": 2, "only_this": 10, "only_other": 0, "both_wrong": 3,
        "p": 2 / 2**10,
    }  # fmt: skip
    assert paired(old, new)["p"] == comparison["p"] and paired(new, new)["p"] == 1.0
    # one each way: as likely as not
    assert paired(_report([[True, False]]), _report([[False, True]]))["p"] == 1.0
    said = format_paired(comparison, Path("eval9.json"))
    assert "only this one 10, only that one 0" in said and "+0.667" in said
    assert "not a clear difference" not in said
    assert "not a clear difference" in format_paired(paired(new, new), Path("same.json"))
    other_dialogues = _report([[True, None, True]] * 5)
    other_dialogues["dialogues"][0]["requests"][0]["question"] = "another question"
    with pytest.raises(ValueError, match="not of the same held-out dialogues"):
        paired(new, other_dialogues)
    (tmp_path / "bad.json").write_text(json.dumps({"figures": {}}))
    with pytest.raises(ConfigError, match=r"--against .*bad\.json: not a report of"):
        read_report(tmp_path / "bad.json")


def test_an_answer_starts_with_new_sound_not_with_talk_that_went_on() -> None:
    """Latency is from the user's end to the answer's first sound: not to speech that began
    before the request and ran on through it (which the earlier scoring took as an answer at
    0 s), but an answer begun while the user still spoke starts at once."""

    def active(*spans: tuple[int, int]) -> np.ndarray:
        frames = np.zeros(60, dtype=bool)
        for a, b in spans:
            frames[a:b] = True
        return frames

    # the request is frames 5-10 (user_start 5, user_end 10), the window ends at 60
    assert _answer_onset(active((12, 20)), 5, 10, 60) == 12
    assert _answer_onset(active((8, 20)), 5, 10, 60) == 10  # begun during the request: at once
    talked_over = active((0, 6), (8, 30), (41, 50))  # a count with a gap, then the answer
    assert _answer_onset(talked_over, 5, 10, 60) == 41
    assert _answer_onset(active((0, 60)), 5, 10, 60) is None  # never stopped: no answer
    assert _answer_onset(active(), 5, 10, 60) is None


def test_another_report_is_judged_again_by_this_versions_rules(tmp_path: Path) -> None:
    """An older report counted a count that went on as right; compared against, its answers
    are judged again from the text it kept, with the same dialogues' requests."""
    count = {"intent": "count", "question": "Count from five to seven.",
             "accept": ["five six seven"], "answers": ["Five, six, seven."]}  # fmt: skip
    stop = {"intent": "stop", "question": "Stop."}
    description = {"turns": [{"turn": count}, {"turn": stop}, {"turn": count}]}
    (tmp_path / "eval_000000.json").write_text(json.dumps(description))
    old: dict[str, Any] = {"dialogues": [{"file": "eval_000000.flac", "requests": [
        {"question": count["question"], "text": "Five, six, seven, eight.", "answer_correct": True},
        {"question": "Stop."},
        {"question": count["question"], "text": "Five, six, seven.", "answer_correct": True},
    ]}]}  # fmt: skip
    requests = rejudged(old, tmp_path)["dialogues"][0]["requests"]
    assert [r.get("answer_correct") for r in requests] == [False, None, True]
    assert requests[0]["answer_kind"] == "count"
    old["dialogues"][0]["requests"][2]["question"] = "Count from one to three."
    with pytest.raises(ValueError, match="another request"):
        rejudged(old, tmp_path)
    old["dialogues"][0]["file"] = "eval_000001.flac"  # a dialogue this folder does not have
    with pytest.raises(ValueError, match="eval_000001, which is not there"):
        rejudged(old, tmp_path)


def test_an_answer_begun_before_the_users_end_is_read_whole() -> None:
    """The text runs ahead of the sound: an answer whose first word was written while the user
    still spoke is read from that word, not from the next; a sentence finished during the
    request, or written before it, is not part of the answer."""
    turn = {"user_start": 0.8, "user_end": 2.0}  # frames 10 to 25 at 0.08 s
    early = Session(np.zeros(0, np.float32), [(22, " That"), (25, " is twelve.")], 0.08)
    assert _answer_text(early, turn, 4.0) == " That is twelve."
    said = Session(
        np.zeros(0, np.float32), [(5, " Goodbye"), (12, " Hm."), (26, " That is two.")], 0.08
    )
    assert _answer_text(said, turn, 4.0) == " That is two."
