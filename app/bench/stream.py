"""What `antiphon bench` times, whichever implementation runs it: one streaming session's three
steps (encode, LM step, decode) for a batch of conversations."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class Stream:
    """One streaming session of one implementation at one batch size: the three steps."""

    encode: Callable[[torch.Tensor], torch.Tensor]  # pcm [B, 1, 1920] -> codes [B, K, 1]
    # user codes -> the assistant's codes [B, dep_q, 1] (None: nothing yet); None: codec only
    lm: Callable[[torch.Tensor], torch.Tensor | None] | None
    decode: Callable[[torch.Tensor], torch.Tensor]  # codes [B, K, 1] -> pcm [B, 1, 1920]


class Implementation(Protocol):
    def stream(self, batch_size: int) -> contextlib.AbstractContextManager[Stream]: ...
