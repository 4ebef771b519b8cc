"""What the synthetic dialogues say: a small domain, its phrasings, and the fixed train/eval split.

Domain: greetings and farewells, the assistant's name, arithmetic, counting, spelling a short
word, yes/no questions about small facts. Each request is a `Turn`: what the user says, what the
assistant answers, and `key`, the words that an answer must contain to be correct (what
`app.train.quality` checks the inner monologue for).

The split is fixed in this file, so the same seed always gives the same data: phrasings marked
for evaluation, arithmetic problems and counting ranges chosen by a fixed rule, and user voices
(variants and one accent) are never used in training dialogues.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from .speech import Voice

Split = Literal["train", "eval"]

ASSISTANT_NAME = "Antiphon"
# One voice for the assistant, as Moshi has one: the model learns to speak in it. flite's rms
# is a clustergen (statistical parametric) voice trained on a real speaker's recordings: smoother
# and more human than espeak-ng's formant synthesis and the diphone voices, and never a user's
# voice here (docs/demo-model.md says how it was chosen).
ASSISTANT_VOICE = Voice("rms", speed=165, engine="flite")

# User voices of the training split: three synthesizers. espeak-ng: accents x variants x speed x
# pitch (variants that are not speech-like, whispers, robots, croaks, are left out); flite and
# festival: their English voices (speed only).
ACCENTS = (
    "en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029",
    "en-us-nyc",
)  # fmt: skip
VARIANTS = (
    "Alex", "Alicia", "Andrea", "Andy", "Annie", "AnxiousAndy", "Denis", "Diogo", "Gene",
    "Gene2", "Henrique", "Hugo", "Jacky", "Lee", "Marco", "Mario", "Michael", "Mike", "Nguyen",
    "RicishayMax", "RicishayMax2", "Storm", "adam", "anika", "announcer", "antonio", "aunty",
    "belinda", "benjamin", "boris", "caleb", "david", "ed", "edward", "edward2", "f1", "f2",
    "f4", "f5", "grandma", "grandpa", "gustave", "iven", "iven2", "iven3", "john",
    "kaukovalta", "klatt", "klatt2", "klatt3", "klatt4", "linda", "m1", "m2", "m3", "m4", "m5",
    "m6", "m7", "m8", "marcelo", "max", "michel", "miguel", "norbert", "pablo", "paul", "pedro",
    "quincy", "rob", "robert", "sandro", "shelby", "steph", "steph2", "steph3", "travis",
    "victor", "zac",
)  # fmt: skip
FLITE_VOICES = ("awb", "kal", "kal16")
FESTIVAL_VOICES = ("kal_diphone", "ked_diphone")
# Held out of training entirely: one speaker, slt (CMU ARCTIC), in both synthesizers that have
# her. The evaluation split's users speak with her half of the time, so the figures say how the
# model does on a voice it has never heard, and on voices it has.
HELD_OUT_VOICES = (Voice("slt", engine="flite"), Voice("cmu_us_slt_arctic_hts", engine="festival"))


# Training voices are resampled by a random factor in this range (`Voice.tract`): pitch and
# formants up to 40% higher. The synthesizers' natural-sounding voices are all men's (flite's
# awb, kal; festival's kal, ked) but the held-out one; an intent probe on log-mel (1 thread, 500
# steps, 2500 training dialogues) told held-out requests in the held-out woman's voice 0.53 of
# the time with every training request resampled so, 0.40 without (training voices: 0.73 / 0.72).
TRACT_RANGE = (0.9, 1.4)


def user_voice(rng: np.random.Generator, split: Split) -> Voice:
    speed = int(rng.integers(120, 211))
    if split == "eval" and rng.random() < 0.5:
        held_out = HELD_OUT_VOICES[int(rng.integers(len(HELD_OUT_VOICES)))]
        return Voice(held_out.language, speed=speed, engine=held_out.engine)
    engine = str(rng.choice(["espeak", "flite", "festival"], p=[0.5, 0.25, 0.25]))
    if engine == "flite":
        voice = Voice(str(rng.choice(FLITE_VOICES)), speed=speed, engine="flite")
    elif engine == "festival":
        voice = Voice(str(rng.choice(FESTIVAL_VOICES)), speed=speed, engine="festival")
    else:
        voice = Voice(
            language=str(rng.choice(ACCENTS)),
            variant=str(rng.choice(VARIANTS)),
            speed=speed,
            pitch=int(rng.integers(20, 81)),
            pitch_range=int(rng.integers(30, 91)),
        )
    if split == "train":  # every training voice a new speaker: TRACT_RANGE
        voice = replace(voice, tract=round(float(rng.uniform(*TRACT_RANGE)), 3))
    return voice


def is_held_out(voice: Voice) -> bool:
    return any(voice.engine == v.engine and voice.language == v.language for v in HELD_OUT_VOICES)


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


# The split is random but fixed: this seed draws which problems, ranges, pairs and phrasings only
# the evaluation split uses (a rule such as (5a + b) % 5 == 2 would hold out every count ending
# on 2, 7, 12 or 17, and training would never say "seventeen" as a last number).
SPLIT_SEED = 20261130


def _hold_out(items: list, fraction: float, salt: int, split: Split) -> list:
    """A fixed random `fraction` of `items` for "eval"; the rest for "train" (order kept)."""
    rng = np.random.default_rng([SPLIT_SEED, salt])
    held = set(rng.permutation(len(items))[: max(1, round(fraction * len(items)))].tolist())
    return [item for i, item in enumerate(items) if (i in held) == (split == "eval")]


def arithmetic_problems(split: Split) -> list[tuple[int, str, int]]:
    """(a, operation, b) with a one- or two-word answer; one in six held out at random."""
    problems = [(a, "plus", b) for a in range(11) for b in range(11)]
    problems += [(a, "minus", b) for a in range(21) for b in range(min(a, 10) + 1)]
    problems += [(a, "times", b) for a in range(1, 10) for b in range(1, 10) if a * b < 50]
    return _hold_out(problems, 1 / 6, 1, split)


def counting_ranges(split: Split) -> list[tuple[int, int]]:
    """(first, last) to count; one in five held out at random."""
    ranges = [(a, b) for a in range(0, 12) for b in range(a + 2, min(a + 10, 20) + 1)]
    return _hold_out(ranges, 1 / 5, 2, split)


def comparison_pairs(split: Split) -> list[tuple[int, int]]:
    """(a, b) to compare, a != b below 20; one in five held out at random."""
    pairs = [(a, b) for a in range(20) for b in range(20) if a != b]
    return _hold_out(pairs, 1 / 5, 3, split)


# --- turns -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Turn:
    intent: str
    question: str  # what the user says
    answer: str  # what the assistant says
    # The words that make the answer right ("is twelve", "c a t", "hello"): the tokens the LM's
    # loss weighs more (monologue.answer_frames). A greeting, farewell or name is judged right
    # if the monologue's first sentence holds one; the others' first sentence must be one of
    # `answers`, whole (app.train.answers.answer_right).
    accept: tuple[str, ...]
    # For the audio check: every correct answer text, and wrong answers of the same form.
    answers: tuple[str, ...]
    distractors: tuple[str, ...]


# --- how people ask ---------------------------------------------------------------------------
# Each intent has 20 or more core phrasings; a fixed random fifth of them is heard only in the
# evaluation split. A request is composed: an opener ("hey", "so", "um", "hey Antiphon"), the
# core, sometimes "please"; numbers in words, sometimes as digits (the synthesizers say them).

OPENERS = (
    "", "", "", "", "Hey, ", "So, ", "Um, ", "Uh, ", "Okay, ", f"Hey {ASSISTANT_NAME}, ",
    f"{ASSISTANT_NAME}, ", "Right, ", "Alright, ", "Hmm, ", "Well, ",
)  # fmt: skip
_GREETING_OPENERS = ("", "", "", "Oh, ", "Um, ", "Well, ", f"{ASSISTANT_NAME}? ")

PHRASINGS: dict[str, tuple[str, ...]] = {
    "greeting": (
        "hello.", "hi.", "hi there.", "hey there.", "good morning.", "good afternoon.",
        "good evening.", "hello, how are you?", "hi, how's it going?", "how are you doing?",
        "hey, how are you?", "nice to meet you.", "hello there!", "howdy.", "greetings.",
        "morning!", "hi, are you there?", "hello, can you hear me?", "hey, what's up?",
        "hiya.", "good day to you.", "hello hello.",
    ),
    "farewell": (
        "goodbye.", "bye.", "bye bye.", "see you later.", "thanks, bye!", "bye for now.",
        "talk to you later.", "see you soon.", "I have to go, bye.", "that's all, goodbye.",
        "okay, goodbye then.", "farewell, take care.", "have a good day, bye.",
        "catch you later.", "good night.", "thanks for your help, bye.", "I'm done, see you.",
        "see you around.", "take care, bye.", "so long.", "I'm off, bye now.",
    ),
    "name": (
        "what is your name?", "who are you?", "what are you called?", "what's your name?",
        "tell me your name.", "do you have a name?", "what should I call you?",
        "may I ask your name?", "who am I talking to?", "what do people call you?",
        "and you are?", "what's your name again?", "remind me of your name.", "who is this?",
        "introduce yourself.", "can you tell me your name?", "what name do you go by?",
        "sorry, who are you?", "I'd like to know your name.", "what do I call you?",
    ),
    "arithmetic": (
        "what is {a} {op} {b}?", "what's {a} {op} {b}?", "how much is {a} {op} {b}?",
        "{a} {op} {b}?", "{a} {op} {b} is?", "can you tell me {a} {op} {b}?",
        "tell me {a} {op} {b}.", "what do you get for {a} {op} {b}?",
        "please work out {a} {op} {b}.", "calculate {a} {op} {b}.",
        "could you work out {a} {op} {b}?", "what does {a} {op} {b} make?",
        "what does {a} {op} {b} equal?", "do you know what {a} {op} {b} is?",
        "what would {a} {op} {b} be?", "quick math, {a} {op} {b}?", "solve {a} {op} {b}.",
        "how about {a} {op} {b}?", "and {a} {op} {b}?", "what is {a} {op} {b} equal to?",
        "I need {a} {op} {b}.", "help me with {a} {op} {b}.",
    ),
    "count": (
        "count to {b}.", "can you count to {b}?", "please count to {b}.",
        "count up to {b} for me.", "could you count to {b}?", "let's hear you count to {b}.",
        "I'd like you to count to {b}.", "will you count to {b}?", "count from {a} to {b}.",
        "can you count from {a} to {b}?", "please count from {a} up to {b}.",
        "count up from {a} to {b}.", "start at {a} and count to {b}.", "count {a} to {b}.",
        "could you count from {a} to {b} for me?", "go from {a} to {b}.",
        "count from {a} up to {b}.", "count starting at {a}, up to {b}.",
        "begin at {a} and count up to {b}.", "count for me from {a} to {b}.",
        "I want to hear {a} to {b}.", "counting from {a}, go up to {b}.",
    ),
    "spell": (
        "how do you spell {w}?", "spell {w}.", "can you spell {w} for me?",
        "what's {w} spelled like?", "what is the spelling of {w}?", "how is {w} spelled?",
        "could you spell {w}?",
        "spell the word {w}.", "how would you spell {w}?", "what letters are in {w}?",
        "spell out {w}.", "I need the spelling of {w}.", "do you know how to spell {w}?",
        "can you spell the word {w}?", "how's {w} spelled?", "spell {w} for me.",
        "what's the spelling of {w}?", "tell me how to spell {w}.",
        "letter by letter, {w}.", "give me the spelling of {w}.", "how do I spell {w}?",
    ),
    "fact": (
        "{q}?", "tell me, {q}?", "quick question, {q}?", "I wonder, {q}?", "do you know, {q}?",
        "be honest, {q}?", "true or false, {q}?", "yes or no, {q}?",
        "I've always wondered, {q}?", "can you tell me, {q}?", "here's one, {q}?",
        "let me ask you, {q}?", "out of curiosity, {q}?", "settle this, {q}?",
        "I was thinking, {q}?", "so tell me, {q}?", "just checking, {q}?",
        "what do you think, {q}?", "here's a question, {q}?", "one more, {q}?",
    ),
    "compare": (
        "is {a} bigger than {b}?", "is {a} more than {b}?", "is {a} greater than {b}?",
        "is {a} larger than {b}?", "would you say {a} is bigger than {b}?",
        "is {a} higher than {b}?", "is {a} a bigger number than {b}?",
        "tell me, is {a} more than {b}?", "{a} is bigger than {b}, right?",
        "is {a} greater than {b} or not?", "is the number {a} bigger than {b}?",
        "am I right that {a} is bigger than {b}?", "is {a} above {b}?",
        "{a} bigger than {b}?", "is {a} more than {b}, yes or no?",
        "quick check, is {a} more than {b}?", "is {a} over {b}?",
        "would {a} be more than {b}?", "is {a} larger than {b}, do you think?",
        "true or false, {a} is more than {b}?", "is {a} bigger than {b}, or smaller?",
    ),
    "stop": (
        "stop.", "wait, stop.", "okay, that's enough.", "stop please.", "hold on.",
        "thanks, you can stop now.", "enough.", "okay okay, stop.", "that's fine, stop.",
        "alright, stop there.", "wait a second.", "hang on.", "stop counting.", "no, stop.",
        "okay, I get it.", "let me stop you there.", "okay, thanks, that's enough.",
        "stop, stop.", "hold it.", "whoa, stop.", "that's plenty.",
    ),
}  # fmt: skip
_INTENT_SALT = {intent: 10 + i for i, intent in enumerate(PHRASINGS)}
# How people say the operations; the assistant answers with the first word of each.
OPERATION_WORDS = {"plus": ("plus", "and", "add"), "minus": ("minus", "take away", "subtract"),
                   "times": ("times", "multiplied by", "multiply")}  # fmt: skip


def phrasings(intent: str, split: Split) -> list[str]:
    """The core phrasings of `intent` that `split` uses (a fixed random fifth for "eval")."""
    return _hold_out(list(PHRASINGS[intent]), 1 / 5, _INTENT_SALT[intent], split)


def _compose(rng: np.random.Generator, intent: str, split: Split, **slots: str) -> str:
    options = phrasings(intent, split)
    if intent == "count" and slots["a"] not in ("one", "1"):
        options = [o for o in options if "{a}" in o]  # "count to" starts at one
    core = str(rng.choice(options)).format(**slots)
    if intent in ("greeting", "farewell", "stop"):
        opener = str(rng.choice(_GREETING_OPENERS)) if intent == "greeting" else ""
    else:
        opener = str(rng.choice(OPENERS))
        if rng.random() < 0.15 and core[-1] in ".?" and "please" not in core:
            core = core[:-1] + ", please" + core[-1]
    if opener.endswith(", ") and not core.startswith("I "):
        core = core[0].lower() + core[1:]
    elif opener:
        core = _cap(core)
    return _cap(opener + core)


def _said_number(rng: np.random.Generator, n: int) -> str:
    """A number as the user's text has it: in words, a quarter of the time as digits."""
    return str(n) if rng.random() < 0.25 else number_word(n)


def _phrase_operation(rng: np.random.Generator, op: str, a: str, b: str) -> dict[str, str]:
    """Slots for an arithmetic phrasing; "add", "subtract", "multiply" reorder the words."""
    word = str(rng.choice(OPERATION_WORDS[op]))
    if word == "add":
        return {"a": f"{a}", "op": "and", "b": b} if rng.random() < 0.5 else \
            {"a": "the sum of " + a, "op": "and", "b": b}  # fmt: skip
    if word == "subtract":
        return {"a": b, "op": "subtracted from", "b": a}
    if word == "multiply":
        return {"a": a, "op": "multiplied by", "b": b}
    return {"a": a, "op": word, "b": b}


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


SPELLING_WORDS = (
    "cat", "dog", "sun", "red", "box", "cup", "hat", "pen", "map", "bus", "fish", "bird", "tree",
    "book", "milk", "blue", "star", "frog", "cake", "lamp", "rain", "door", "ship", "moon",
)  # fmt: skip
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
_CANNED_ANSWERS = {
    "greeting": ("Hello! How can I help you?", "Hi! What can I do for you?", "Hello there!"),
    "farewell": ("Goodbye! Have a nice day.", "Bye! Talk to you soon.", "Goodbye!"),
    "name": (f"My name is {ASSISTANT_NAME}.", f"I am {ASSISTANT_NAME}."),
}
_CANNED_ACCEPT = {"greeting": ("hello", "hi"), "farewell": ("goodbye", "bye"),
                  "name": (ASSISTANT_NAME.lower(),)}  # fmt: skip
INTENTS = ("greeting", "farewell", "name", "arithmetic", "count", "spell", "fact", "compare")
_INTENT_WEIGHTS = np.array([1, 1, 1, 4, 2, 2, 2, 1], dtype=float)


def request(rng: np.random.Generator, split: Split, intent: str | None = None) -> Turn:
    """A random request of the domain (or of one intent)."""
    intent = intent or str(rng.choice(INTENTS, p=_INTENT_WEIGHTS / _INTENT_WEIGHTS.sum()))
    if intent in _CANNED_ANSWERS:
        answers = _CANNED_ANSWERS[intent]
        others = tuple(a for k, more in _CANNED_ANSWERS.items() if k != intent for a in more)
        return Turn(intent, _compose(rng, intent, split), str(rng.choice(answers)),
                    _CANNED_ACCEPT[intent], answers, others)  # fmt: skip
    if intent == "arithmetic":
        problems = arithmetic_problems(split)
        a, op, b = problems[int(rng.integers(len(problems)))]
        c = OPERATIONS[op](a, b)
        slots = _phrase_operation(rng, op, _said_number(rng, a), _said_number(rng, b))
        question = _compose(rng, intent, split, **slots)

        def forms(n: int) -> tuple[str, str]:
            said = f"{_cap(number_word(a))} {op} {number_word(b)}"
            return f"{said} is {number_word(n)}.", f"That is {number_word(n)}."

        near = [n for n in range(max(0, c - 5), c + 6) if n != c]
        answers = forms(c)
        return Turn(intent, question, answers[0] if rng.random() < 0.6 else answers[1],
                    (f"is {number_word(c)}",), answers,
                    tuple(f for n in near for f in forms(n)))  # fmt: skip
    if intent == "count":
        ranges = counting_ranges(split)
        a, b = ranges[int(rng.integers(len(ranges)))]
        question = _compose(rng, intent, split, a=_said_number(rng, a), b=_said_number(rng, b))
        return _count(intent, question, a, b)
    if intent == "spell":
        word = str(rng.choice(SPELLING_WORDS))

        def spelled(w: str) -> tuple[str, str]:
            letters = ", ".join(w.upper())
            return f"{_cap(w)} is spelled {letters}.", f"{letters}."

        answers = spelled(word)
        others = tuple(f for w in SPELLING_WORDS if w != word for f in spelled(w))
        return Turn(intent, _compose(rng, intent, split, w=word),
                    answers[0] if rng.random() < 0.6 else answers[1], (" ".join(word),),
                    answers, others)  # fmt: skip
    if intent == "fact":
        q, answer = FACTS[int(rng.integers(len(FACTS)))]
        question = _compose(rng, intent, split, q=q)
        others = tuple(a for _, a in FACTS if a != answer)
        return Turn(intent, question, answer, (answer.split(",")[0].lower(),), (answer,), others)
    if intent == "compare":
        pairs = comparison_pairs(split)
        a, b = pairs[int(rng.integers(len(pairs)))]
        spoken_a, spoken_b = number_word(a), number_word(b)
        bigger = f"Yes, {spoken_a} is bigger than {spoken_b}."
        smaller = f"No, {spoken_a} is smaller than {spoken_b}."
        answer, other = (bigger, smaller) if a > b else (smaller, bigger)
        question = _compose(rng, intent, split, a=_said_number(rng, a), b=_said_number(rng, b))
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
    question = _compose(rng, "count", split, a=_said_number(rng, a), b=_said_number(rng, b))
    return _count("count", question, a, b)


def stop_request(rng: np.random.Generator, split: Split) -> str:
    return _compose(rng, "stop", split)
