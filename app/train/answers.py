"""What makes an answer right, and what kind of answer a text is: the held-out evaluation's
reading of the inner monologue (`app.train.quality` scores with these)."""

from __future__ import annotations

import re

from .content import number_word
from .features import edit_distance


def normalise(text: str) -> str:
    """Lower case, words only, padded with spaces: " seven plus five is twelve "."""
    return " " + " ".join(re.sub(r"[^a-z0-9' ]", " ", text.lower()).split()) + " "


NAMED_ANSWER_INTENTS = ("greeting", "farewell", "name")  # any answer that says the word


SENTENCE_END = re.compile(r"[.!?]")


def first_sentence(text: str) -> str:
    """The normalised first sentence of `text` (up to its first ".", "!" or "?"): the answer
    the evaluation reads."""
    return normalise(next((part for part in SENTENCE_END.split(text) if part.strip()), ""))


def answer_right(text: str, request: dict) -> bool:
    """Whether the monologue `text` answers `request` (a dialogue's turn["turn"]). Its first
    sentence decides, as for `answer_kind`: for a greeting, a farewell or the name, it holds one
    of the request's `accept` words ("hello", "bye", "antiphon"); for the others it is one of
    the right answers, whole: a count that stops a number late or starts early ("Five, ...,
    fourteen, fifteen."), "is twenty one" for "is twenty", an extra letter ("C, A, T, S."), a
    "No" about other numbers, or a right answer after a wrong one is wrong."""
    sentence = first_sentence(text)
    if request["intent"] in NAMED_ANSWER_INTENTS:
        return any(f" {accept} " in sentence for accept in request["accept"])
    return any(sentence == normalise(answer) for answer in request["answers"])


_TENS = {number_word(n) for n in range(20, 100, 10)}
_ONES = {number_word(n) for n in range(1, 10)}
_NUMBER_WORDS = {number_word(n) for n in range(20)} | _TENS
_KINDS = (  # (kind, pattern in the normalised first sentence), the first that matches
    ("arithmetic", r" (plus|minus|times) .* is | that is | that's "),
    ("spell", r" spelled |^ ([a-z] ){2,}$"),
    ("compare", r" (bigger|smaller) than "),
    ("fact", r"^ (yes|no) "),
    ("name", r" (antiphon|my name) "),
    ("farewell", r" (goodbye|bye) "),
    ("greeting", r" (hello|hi) "),
)


def _leading_numbers(words: list[str]) -> tuple[int, int]:
    """How many numbers `words` start with ("twenty one" is one) and how many words they take."""
    numbers = used = 0
    while used < len(words) and words[used] in _NUMBER_WORDS:
        compound = words[used] in _TENS and used + 1 < len(words) and words[used + 1] in _ONES
        used += 2 if compound else 1
        numbers += 1
    return numbers, used


def answer_kind(text: str) -> str | None:
    """Which intent's kind of answer the first sentence of `text` is (the forms of
    app.train.content's answers: "Four plus five is nine.", "Eleven, twelve.", "C, A, T.",
    "No, cats meow."); a count starts with two numbers or more, a number alone is a sum's
    result; None if none or no text."""
    sentence = first_sentence(text)
    kind = next((kind for kind, pattern in _KINDS if re.search(pattern, sentence)), None)
    if kind is not None:
        return kind
    words = sentence.split()
    numbers, used = _leading_numbers(words)
    if numbers >= 2:
        return "count"
    return "arithmetic" if numbers == 1 and used == len(words) else None


def closest_candidate(text: str, candidates: list[str]) -> str | None:
    """The candidate answer whose words are fewest edits from `text`'s (None if no text)."""
    words = normalise(text).split()
    if not words:
        return None
    return min(candidates, key=lambda c: edit_distance(words, normalise(c).split()))
