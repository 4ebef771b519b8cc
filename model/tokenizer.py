"""Text tokenizer: a SentencePiece wrapper and a streaming detokenizer for the inner monologue.

The LM emits one text token per frame, mostly PAD. `TextStream` turns that stream into readable
text as it arrives, and the text it returns, joined, equals `sp.decode` of all the non-special ids.
A model whose monologue also writes down what it heard (the demo model: `LMConfig.heard_ids`)
marks those stretches; the stream keeps them apart (`hearing`, `heard_text`).
"""

from __future__ import annotations

import operator
from pathlib import Path
from typing import SupportsIndex

import sentencepiece

from model.errors import CheckpointError

# Kyutai's text specials (moshi's LMModel defaults, ids in tokenizer_spm_32k_3.model).
TEXT_PAD_ID = 3  # "nothing to say this frame"
TEXT_END_OF_PADDING_ID = 0  # "a word starts next frame"


class TextTokenizer:
    """A SentencePiece model loaded from a `.model` file (Kyutai's or the bundled demo one)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(
                f"text tokenizer not found: {self.path} (expected a SentencePiece .model file, "
                "such as Kyutai's tokenizer_spm_32k_3.model)"
            )
        try:
            self._sp = sentencepiece.SentencePieceProcessor(model_file=str(self.path))
        except (RuntimeError, OSError) as exc:
            raise CheckpointError(
                f"cannot load text tokenizer {self.path}: not a valid SentencePiece model ({exc})"
            ) from exc

    @property
    def vocab_size(self) -> int:
        """Number of pieces; the LM's text card. Ids are in [0, vocab_size)."""
        return int(self._sp.get_piece_size())

    def encode(self, text: str) -> list[int]:
        return list(self._sp.encode(text, out_type=int))

    def decode(self, ids: list[int]) -> str:
        return str(self._sp.decode(ids))

    def piece(self, token_id: int) -> str:
        """The raw piece, with "▁" marking a word start (`IndexError` if out of range)."""
        if not 0 <= token_id < self.vocab_size:
            raise IndexError(f"token id {token_id} out of range [0, {self.vocab_size})")
        return str(self._sp.id_to_piece(token_id))

    def is_byte(self, token_id: int) -> bool:
        """Whether the piece is a byte-fallback piece such as <0xE3> (part of a UTF-8 sequence)."""
        return bool(self._sp.is_byte(token_id))

    def stream(
        self,
        pad_id: int = TEXT_PAD_ID,
        end_of_padding_id: int = TEXT_END_OF_PADDING_ID,
        heard_ids: tuple[int, int] | None = None,
    ) -> TextStream:
        return TextStream(
            self, pad_id=pad_id, end_of_padding_id=end_of_padding_id, heard_ids=heard_ids
        )


class TextStream:
    """Streaming detokenizer: one text token id in, the newly readable text out.

    PAD, end-of-padding, the LM's initial token (id == vocab_size) and any other out-of-range id
    (moshi uses -1 for "not generated yet") are hidden. Byte-fallback pieces are held back until
    the piece after them, so a multi-byte character is never returned half-made.

    Decoding is exact because it is SentencePiece's own: each step decodes the ids since the last
    *anchor* (a committed piece that decodes to visible text) with the anchor in front, and returns
    what is new. The anchor makes a word start decode as " word" mid-stream, as it does in a full
    decode, while the work per step stays bounded by the length of one word.

    With `heard_ids` (open, close), the ids between an open and the next close or end-of-padding
    are what the model heard the user say, not what it says: `step` returns them as it returns
    its own words, with `hearing` true, and they gather in `heard_text`, not in `text`.
    """

    def __init__(
        self,
        tokenizer: TextTokenizer,
        *,
        pad_id: int = TEXT_PAD_ID,
        end_of_padding_id: int = TEXT_END_OF_PADDING_ID,
        heard_ids: tuple[int, int] | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.hidden_ids = frozenset({pad_id, end_of_padding_id})
        self.end_of_padding_id = end_of_padding_id
        # the heard words: a stream of their own (so each decodes as a whole), and the marks
        self._heard = (
            (TextStream(tokenizer, pad_id=pad_id, end_of_padding_id=end_of_padding_id), *heard_ids)
            if heard_ids is not None
            else None
        )
        self.hearing = False  # the last id was inside a stretch of heard words
        self.reset()

    @property
    def heard_text(self) -> str:
        """Everything the model wrote down of what it heard (with `heard_ids`)."""
        return self._heard[0].text if self._heard is not None else ""

    def reset(self) -> None:
        """Start a new stream (a new conversation)."""
        self.hearing = False
        if self._heard is not None:
            self._heard[0].reset()
        self._anchor: list[int] = []  # [] at the very start, else one committed id
        self._anchor_text = ""  # decode(self._anchor)
        self._pending: list[int] = []  # ids after the anchor
        self._pending_text = ""  # text already returned for self._pending
        self.text = ""  # everything returned so far

    def step(self, token_id: SupportsIndex) -> str:
        """Feed one token id (int, numpy int or 0-d integer tensor); return the new text."""
        token_id = operator.index(token_id)
        if self._heard is not None:
            heard, opening, closing = self._heard
            if token_id == opening:
                self.hearing = True
                return ""
            if self.hearing and token_id in (closing, self.end_of_padding_id):
                self.hearing = False
                return ""
            if self.hearing:
                return heard.step(token_id)
        if token_id in self.hidden_ids or not 0 <= token_id < self.tokenizer.vocab_size:
            return ""
        self._pending.append(token_id)
        if self.tokenizer.is_byte(token_id):
            return ""  # may be the first bytes of a character: wait for the rest
        decoded = self.tokenizer.decode(self._anchor + self._pending)
        assert decoded.startswith(self._anchor_text)
        pending_text = decoded[len(self._anchor_text) :]
        assert pending_text.startswith(self._pending_text)
        new_text = pending_text[len(self._pending_text) :]
        self._pending_text = pending_text
        self.text += new_text
        anchor_text = self.tokenizer.decode([token_id])
        if anchor_text:
            # Visible on its own: it ends the leading-space and byte-group rules of a decode.
            self._anchor, self._anchor_text = [token_id], anchor_text
            self._pending, self._pending_text = [], ""
        return new_text
