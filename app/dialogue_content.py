"""What the synthetic dialogues say: a small domain, its phrasings, and the fixed train/eval split.

Domain: greetings and farewells, the assistant's name, arithmetic, counting, spelling a short
word, yes/no questions about small facts. Each request is a `Turn`: what the user says, what the
assistant answers, and `key`, the words that an answer must contain to be correct (what
`app.demo_eval` checks the inner monologue for).

The split is fixed in this file, so the same seed always gives the same data: phrasings marked
for evaluation, arithmetic problems and counting ranges chosen by a fixed rule, and user voices
(variants and one accent) are never used in training dialogues.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from .speech import Voice

Split = Literal["train", "eval"]

ASSISTANT_NAME = "Antiphon"
# One voice for the assistant, as Moshi has one: the model learns to speak in it.
ASSISTANT_VOICE = Voice("en-us", "f3", speed=165, pitch=55, pitch_range=55)

# User voices: accents x variants x speed x pitch. Variants that are not speech-like (whisper,
# robots, croak) are left out; the assistant's own variant too.
ACCENTS = (
    "en-us",
    "en",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-029",
    "en-us-nyc",
)
EVAL_ACCENTS = ("en-gb-x-gbcwmd",)
VARIANTS = (
    "Alex", "Alicia", "Andrea", "Andy", "Annie", "AnxiousAndy", "Denis", "Diogo", "Gene",
    "Henrique", "Hugo", "Jacky", "Lee", "Marco", "Michael", "Mike", "Nguyen",
    "RicishayMax", "Storm", "adam", "anika", "announcer", "antonio", "aunty", "belinda",
    "benjamin", "boris", "caleb", "david", "ed", "edward", "f1", "f2", "f4", "grandma",
    "grandpa", "gustave", "iven", "iven2", "john", "kaukovalta", "klatt", "klatt2", "klatt4",
    "linda", "m1", "m2", "m3", "m5", "m6", "m8", "marcelo", "max", "michel", "miguel",
    "norbert", "pablo", "paul", "pedro", "quincy", "rob", "robert", "sandro", "shelby",
    "steph", "steph2", "travis", "victor", "zac",
)  # fmt: skip
EVAL_VARIANTS = (
    "Gene2", "Mario", "edward2", "f5", "iven3", "klatt3", "m4", "m7", "steph3", "RicishayMax2",
)  # fmt: skip
assert not set(VARIANTS) & set(EVAL_VARIANTS)


def user_voice(rng: np.random.Generator, split: Split) -> Voice:
    accents = ACCENTS if split == "train" else ACCENTS + EVAL_ACCENTS
    variants = VARIANTS if split == "train" else EVAL_VARIANTS
    return Voice(
        language=str(rng.choice(accents)),
        variant=str(rng.choice(variants)),
        speed=int(rng.integers(120, 211)),
        pitch=int(rng.integers(20, 81)),
        pitch_range=int(rng.integers(30, 91)),
    )


# --- numbers ---------------------------------------------------------------------------------

_ONES = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen",
)  # fmt: skip
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")


def number_word(n: int) -> str:
    """0..99 in words, without hyphens (one whitespace word per spoken word)."""
    if not 0 <= n < 100:
        raise ValueError(f"{n} out of range")
    if n < 20:
        return _ONES[n]
    tens, ones = divmod(n, 10)
    return _TENS[tens] if ones == 0 else f"{_TENS[tens]} {_ONES[ones]}"


OPERATIONS = {"plus": lambda a, b: a + b, "minus": lambda a, b: a - b, "times": lambda a, b: a * b}


def arithmetic_problems(split: Split) -> list[tuple[int, str, int]]:
    """(a, operation, b) with a one- or two-word answer; about one in six held out."""
    problems = [(a, "plus", b) for a in range(11) for b in range(11)]
    problems += [(a, "minus", b) for a in range(21) for b in range(min(a, 10) + 1)]
    problems += [(a, "times", b) for a in range(1, 10) for b in range(1, 10) if a * b < 50]
    held_out = [(a, op, b) for a, op, b in problems if (7 * a + 3 * b + len(op)) % 6 == 0]
    return held_out if split == "eval" else [p for p in problems if p not in held_out]


def counting_ranges(split: Split) -> list[tuple[int, int]]:
    """(first, last) to count; about one in five held out."""
    ranges = [(a, b) for a in range(0, 12) for b in range(a + 2, min(a + 10, 20) + 1)]
    held_out = [(a, b) for a, b in ranges if (5 * a + b) % 5 == 2]
    return held_out if split == "eval" else [r for r in ranges if r not in held_out]


# --- turns -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Turn:
    intent: str
    question: str  # what the user says
    answer: str  # what the assistant says
    # Correct if the inner monologue (lower case, punctuation removed) contains one of these
    # word sequences: "is twelve", "c a t", "yes".
    accept: tuple[str, ...]
    # For the audio check: every correct answer text, and wrong answers of the same form.
    answers: tuple[str, ...]
    distractors: tuple[str, ...]


def _phrase(rng: np.random.Generator, phrasings: dict[str, list[str]], split: Split) -> str:
    return str(rng.choice(phrasings[split]))


_GREET = {
    "train": ["Hello.", "Hi there.", "Hey.", "Good morning.", "Hello there!", "Hi, how are you?"],
    "eval": ["Good evening.", "Hey there, how are you doing?"],
}
_GREET_ANSWERS = ["Hello! How can I help you?", "Hi! What can I do for you?", "Hello there!"]
_BYE = {
    "train": ["Goodbye.", "Bye bye.", "See you later.", "Thanks, bye!", "Bye for now."],
    "eval": ["Farewell, take care.", "Okay, goodbye then."],
}
_BYE_ANSWERS = ["Goodbye! Have a nice day.", "Bye! Talk to you soon.", "Goodbye!"]
_NAME = {
    "train": ["What is your name?", "Who are you?", "What are you called?", "What's your name?"],
    "eval": ["Tell me your name.", "Do you have a name?"],
}
_NAME_ANSWERS = [f"My name is {ASSISTANT_NAME}.", f"I am {ASSISTANT_NAME}."]
_ARITHMETIC = {
    "train": ["What is {a} {op} {b}?", "How much is {a} {op} {b}?", "{a} {op} {b}?",
              "Can you tell me {a} {op} {b}?", "What's {a} {op} {b}?"],
    "eval": ["Please work out {a} {op} {b}.", "What do you get for {a} {op} {b}?"],
}  # fmt: skip
_COUNT_TO = {
    "train": ["Count to {b}.", "Can you count to {b}?", "Please count to {b}."],
    "eval": ["Count up to {b} for me."],
}
_COUNT_FROM = {
    "train": ["Count from {a} to {b}.", "Can you count from {a} to {b}?"],
    "eval": ["Please count from {a} up to {b}."],
}
SPELLING_WORDS = (
    "cat", "dog", "sun", "red", "box", "cup", "hat", "pen", "map", "bus", "fish", "bird", "tree",
    "book", "milk", "blue", "star", "frog", "cake", "lamp", "rain", "door", "ship", "moon",
)  # fmt: skip
_SPELL = {
    "train": ["How do you spell {w}?", "Spell {w}.", "Can you spell {w} for me?",
              "Spell {w}, please."],
    "eval": ["What is the spelling of {w}?"],
}  # fmt: skip
# (question, answer): the yes/no is the first word of the answer.
FACTS = (
    ("is the sky blue", "Yes, the sky is blue."),
    ("is fire cold", "No, fire is hot."),
    ("is snow white", "Yes, snow is white."),
    ("is ice hot", "No, ice is cold."),
    ("do fish swim", "Yes, fish swim."),
    ("can dogs fly", "No, dogs cannot fly."),
    ("do birds fly", "Yes, birds fly."),
    ("is grass green", "Yes, grass is green."),
    ("is the sun hot", "Yes, the sun is hot."),
    ("is the moon made of cheese", "No, the moon is made of rock."),
    ("do cats bark", "No, cats meow."),
    ("is water wet", "Yes, water is wet."),
    ("can a car swim", "No, a car cannot swim."),
    ("is a week seven days", "Yes, a week has seven days."),
    ("is a tomato blue", "No, a tomato is red."),
)
_FACT = {
    "train": ["{q}?", "Tell me, {q}?", "Quick question, {q}?"],
    "eval": ["I wonder, {q}?"],
}
_COMPARE = {
    "train": ["Is {a} bigger than {b}?", "Is {a} more than {b}?"],
    "eval": ["Is {a} greater than {b}?"],
}
_STOPS = {
    "train": ["Stop.", "Wait, stop.", "Okay, that's enough.", "Stop please.", "Hold on."],
    "eval": ["Thanks, you can stop now."],
}


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def request(rng: np.random.Generator, split: Split, intent: str | None = None) -> Turn:
    """A random request of the domain (or of one intent)."""
    intents = ["greeting", "farewell", "name", "arithmetic", "count", "spell", "fact", "compare"]
    weights = np.array([1, 1, 1, 4, 2, 2, 2, 1], dtype=float)
    intent = intent or str(rng.choice(intents, p=weights / weights.sum()))
    canned = {"greeting": _GREET_ANSWERS, "farewell": _BYE_ANSWERS, "name": _NAME_ANSWERS}
    if intent in canned:
        phrasings = {"greeting": _GREET, "farewell": _BYE, "name": _NAME}[intent]
        accept = {"greeting": ("hello", "hi"), "farewell": ("goodbye", "bye"),
                  "name": (ASSISTANT_NAME.lower(),)}[intent]  # fmt: skip
        others = tuple(a for k, answers in canned.items() if k != intent for a in answers)
        answers = tuple(canned[intent])
        return Turn(intent, _phrase(rng, phrasings, split), str(rng.choice(answers)), accept,
                    answers, others)  # fmt: skip
    if intent == "arithmetic":
        problems = arithmetic_problems(split)
        a, op, b = problems[int(rng.integers(len(problems)))]
        c = OPERATIONS[op](a, b)
        spoken = {"a": number_word(a), "op": op, "b": number_word(b)}
        question = _cap(_phrase(rng, _ARITHMETIC, split).format(**spoken))

        def forms(n: int) -> tuple[str, str]:
            said = f"{_cap(spoken['a'])} {op} {spoken['b']}"
            return f"{said} is {number_word(n)}.", f"That is {number_word(n)}."

        near = [n for n in range(max(0, c - 5), c + 6) if n != c]
        answers = forms(c)
        return Turn(intent, question, answers[0] if rng.random() < 0.6 else answers[1],
                    (f"is {number_word(c)}",), answers,
                    tuple(f for n in near for f in forms(n)))  # fmt: skip
    if intent == "count":
        ranges = counting_ranges(split)
        a, b = ranges[int(rng.integers(len(ranges)))]
        if a == 1 and rng.random() < 0.7:
            question = _phrase(rng, _COUNT_TO, split).format(b=number_word(b))
        else:
            question = _phrase(rng, _COUNT_FROM, split).format(a=number_word(a), b=number_word(b))
        return _count(intent, question, a, b)
    if intent == "spell":
        word = str(rng.choice(SPELLING_WORDS))

        def spelled(w: str) -> tuple[str, str]:
            letters = ", ".join(w.upper())
            return f"{_cap(w)} is spelled {letters}.", f"{letters}."

        answers = spelled(word)
        others = tuple(f for w in SPELLING_WORDS if w != word for f in spelled(w))
        return Turn(intent, _phrase(rng, _SPELL, split).format(w=word),
                    answers[0] if rng.random() < 0.6 else answers[1], (" ".join(word),),
                    answers, others)  # fmt: skip
    if intent == "fact":
        q, answer = FACTS[int(rng.integers(len(FACTS)))]
        question = _cap(_phrase(rng, _FACT, split).format(q=q))
        others = tuple(a for _, a in FACTS if a != answer)
        return Turn(intent, question, answer, (answer.split(",")[0].lower(),), (answer,), others)
    if intent == "compare":
        a, b = (int(x) for x in rng.choice(20, size=2, replace=False))
        spoken_a, spoken_b = number_word(a), number_word(b)
        bigger = f"Yes, {spoken_a} is bigger than {spoken_b}."
        smaller = f"No, {spoken_a} is smaller than {spoken_b}."
        answer, other = (bigger, smaller) if a > b else (smaller, bigger)
        question = _phrase(rng, _COMPARE, split).format(a=spoken_a, b=spoken_b)
        return Turn(intent, question, answer, ("yes",) if a > b else ("no",), (answer,), (other,))
    raise ValueError(f"unknown intent {intent!r}")


def _count(intent: str, question: str, a: int, b: int) -> Turn:
    def counted(last: int) -> str:
        return _cap(", ".join(number_word(n) for n in range(a, last + 1)) + ".")

    words = " ".join(number_word(n) for n in range(a, b + 1))
    others = tuple(counted(n) for n in (b - 2, b - 1, b + 1, b + 2) if n > a)
    return Turn(intent, question, counted(b), (words,), (counted(b),), others)


def long_request(rng: np.random.Generator, split: Split) -> Turn:
    """A request with a long answer (counting at least seven numbers), for the user to cut."""
    ranges = [r for r in counting_ranges(split) if r[1] - r[0] >= 6]
    a, b = ranges[int(rng.integers(len(ranges)))]
    question = _phrase(rng, _COUNT_FROM, split).format(a=number_word(a), b=number_word(b))
    return _count("count", question, a, b)


def stop_request(rng: np.random.Generator, split: Split) -> str:
    return _phrase(rng, _STOPS, split)
