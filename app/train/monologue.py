"""The dialogues' timed words as the LM's text streams, one token per 12.5 Hz frame.

`text_tokens` lays out the assistant's words as Moshi's inner monologue: a word's tokens from
the frame in which the word starts, one token per frame; PAD elsewhere; end-of-padding in the
frame just before a word that follows padding. `heard_tokens` lays out the user's words the
same way, each after it ends (the training-only hearing head's targets);
`hearing_text_tokens` writes both into one monologue (`train lm --monologue-hears`);
`answer_frames` marks the monologue's tokens that make an answer right.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence

from .dialogues import ASSISTANT, USER


def text_tokens(
    alignments: Sequence[Sequence],
    encode: Callable[[str], list[int]],
    num_frames: int,
    frame_rate: float = 12.5,
    pad_id: int = 3,
    end_of_padding_id: int = 0,
    speaker: str = ASSISTANT,
) -> list[int]:
    """The assistant's words [word, [start, end], speaker] as one text token per frame.

    A word's tokens are queued at the frame in which it starts and come out one per frame (a
    long word runs on into the next frames; a word that starts while tokens are still queued
    waits). Frames with nothing to say are PAD; a PAD frame just before a word's first token
    becomes end-of-padding, so the model can announce that a word is coming.
    """
    return _layout(alignments, encode, num_frames, frame_rate, pad_id, end_of_padding_id, speaker)[
        0
    ]


def _layout(
    alignments: Sequence[Sequence],
    encode: Callable[[str], list[int]],
    num_frames: int,
    frame_rate: float,
    pad_id: int,
    end_of_padding_id: int,
    speaker: str,
) -> tuple[list[int], list[int]]:
    """`text_tokens`, and for each frame the index in `alignments` of the word whose token it
    carries (-1: PAD or end-of-padding)."""
    words = sorted(
        ((a, i) for i, a in enumerate(alignments) if a[2] == speaker), key=lambda w: w[0][1][0]
    )
    tokens = [pad_id] * num_frames
    owners = [-1] * num_frames
    queue: deque[tuple[list[int], int]] = deque()  # the ids still to say, word by word
    head_is_fresh = True  # no id of queue[0] is out yet
    next_word = 0
    for t in range(num_frames):
        while next_word < len(words) and words[next_word][0][1][0] * frame_rate < t + 1:
            ids = encode(words[next_word][0][0])
            if ids:
                queue.append((list(ids), words[next_word][1]))
            next_word += 1
        if not queue:
            continue
        word, owner = queue[0]
        if head_is_fresh and t > 0 and tokens[t - 1] == pad_id:
            tokens[t - 1] = end_of_padding_id
        tokens[t], owners[t] = word.pop(0), owner
        head_is_fresh = not word
        if not word:
            queue.popleft()
    return tokens, owners


ANSWER_FILLER = frozenset({"is", "the", "a", "that"})  # in `accept` phrases, not the answer


def answer_frames(
    description: dict,
    encode: Callable[[str], list[int]],
    num_frames: int,
    frame_rate: float = 12.5,
) -> list[int]:
    """Which frames of the text stream (`text_tokens`) carry what makes an answer right: 2 on
    each answer's first token (it decides what kind of answer it is, and is the one token that
    nothing the assistant said before gives away), 1 on the assistant's other words, during an
    answer, that are among the words of the request's `accept` phrases ("is twelve" ->
    "twelve", "c a t" -> C, A, T, "yes"), else 0. Training can weigh them (`train lm
    --answer-weight`) and the held-out figures score them (`answer_acc`, `answer_first_acc`):
    the rest of an answer ("That is", "is spelled") follows from its first words."""
    alignments = description["alignments"]
    _, owners = _layout(alignments, encode, num_frames, frame_rate, 3, 0, ASSISTANT)
    marks = [0] * num_frames
    for turn in description["turns"]:
        if turn.get("assistant_start") is None:
            continue
        accept = {_plain(w) for phrase in turn["turn"]["accept"] for w in phrase.split()}
        accept -= ANSWER_FILLER
        said = {
            i
            for i, (word, (start, _), speaker) in enumerate(alignments)
            if speaker == ASSISTANT
            and turn["assistant_start"] - 0.05 <= start <= turn["assistant_end"]
        }
        first = True
        for t, owner in enumerate(owners):
            if owner in said:
                if first:
                    marks[t], first = 2, False
                elif _plain(alignments[owner][0]) in accept:
                    marks[t] = 1
    return marks


def _plain(word: str) -> str:
    return "".join(c for c in word.lower() if c.isalnum())


def heard_tokens(
    alignments: Sequence[Sequence],
    encode: Callable[[str], list[int]],
    num_frames: int,
    frame_rate: float = 12.5,
    delay_frames: int = 2,
) -> list[int]:
    """The user's words as one text token per frame, each queued `delay_frames` after the
    word *ends*: what a listener can write down once it has heard the whole word (laid out
    as `text_tokens` lays out the assistant's).

    The training-only hearing head (`antiphon train lm --hear-weight`) learns to predict these
    from the LM's temporal transformer, so that the model is taught to recognise what was said
    and not only when to speak."""
    heard = _heard_words(alignments, delay_frames, frame_rate)
    return text_tokens(heard, encode, num_frames, frame_rate, speaker=USER)


def _heard_words(alignments: Sequence[Sequence], delay_frames: int, frame_rate: float) -> list:
    """The user's words, each said at the instant it can be written down: `delay_frames` after
    it ends."""
    return [
        [word, [end + delay_frames / frame_rate] * 2, USER]
        for word, (_, end), speaker in alignments
        if speaker == USER
    ]


HEARD_OPEN_ID, HEARD_CLOSE_ID = 1, 2  # SentencePiece's BOS and EOS: never a piece of text
HEARD_GAP_FRAMES = 12  # a stretch of heard words closes when the next comes later than this


def hearing_text_tokens(
    alignments: Sequence[Sequence],
    encode: Callable[[str], list[int]],
    num_frames: int,
    frame_rate: float = 12.5,
    delay_frames: int = 2,
    pad_id: int = 3,
    open_id: int = HEARD_OPEN_ID,
    close_id: int = HEARD_CLOSE_ID,
) -> list[int]:
    """An inner monologue that also writes down what the user said: the assistant's words as
    `text_tokens` lays them out, and, in the frames where it has nothing to say, the user's words
    each `delay_frames` after the word ends, a stretch of them between `open_id` and `close_id`.

    The model then answers from the words it wrote down, not from its memory of the sounds:
    writing a word down needs only the last few frames of audio, and an answer copies a number
    from the text before it (as Kyutai's speech-to-text models write the speech they hear into
    the same text stream). A heard word never takes an assistant's frame: words heard while the
    assistant speaks are dropped, and an assistant's word (always after end-of-padding) ends a
    stretch as a close does. A stretch closes once no user word is due within
    HEARD_GAP_FRAMES frames."""
    tokens = text_tokens(alignments, encode, num_frames, frame_rate, pad_id)
    due = sorted(  # (the frame from which the word can be written, its ids), as heard_tokens
        (math.floor(start * frame_rate), encode(word))
        for word, (start, _), _ in _heard_words(alignments, delay_frames, frame_rate)
    )
    queue: deque[int] = deque()
    writing, next_word = False, 0
    for t in range(num_frames):
        while next_word < len(due) and due[next_word][0] <= t:
            queue.extend(due[next_word][1])
            next_word += 1
        if tokens[t] != pad_id:  # the assistant's: what was heard meanwhile is not written
            queue.clear()
            writing = False
            continue
        if queue and not writing:  # open in the frame before, where heard_tokens has its E
            writing = True
            if t == 0 or tokens[t - 1] != pad_id:
                tokens[t] = open_id
                continue
            tokens[t - 1] = open_id
        if queue:
            tokens[t] = queue.popleft()
        elif writing and (next_word == len(due) or due[next_word][0] > t + HEARD_GAP_FRAMES):
            tokens[t], writing = close_id, False
    return tokens
