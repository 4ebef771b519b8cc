"""Where an LM run starts, other than from nothing: another run's weights (`--init`), audio
embeddings in the codec's geometry (`--codec-embeddings`), and the user's tables kept there
(`--frozen-user-embeddings`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import cast

import torch
from safetensors.torch import load_file
from torch import nn

from model.errors import ConfigError
from model.lm import LM

from . import loop

log = logging.getLogger(__name__)

WEIGHTS, CONFIG = "lm.safetensors", "config.json"  # an LM run folder's


def init_lm(lm: LM, run: Path) -> None:
    """Load another LM run's weights into `lm`, refusing another shape with one clear line."""
    path = run / WEIGHTS
    if not path.is_file():
        raise ConfigError(f"--init {run}: no {WEIGHTS} there (an LM run folder has one)")
    try:
        lm.load_state_dict(load_file(str(path)))
    except RuntimeError as error:
        raise ConfigError(
            f"--init {run}: its LM has another shape than this run's (--config, tokenizer, "
            f"codec): {loop.state_dict_detail(error)}"
        ) from error
    config = run / CONFIG
    if config.is_file():  # the same weights, another monologue: allowed (how one starts), said
        hears = "heard_text_ids" in json.loads(config.read_text())
        if hears != (lm.config.heard_ids is not None):
            log.warning(
                "lm: %s's monologue %s what it hears and this run's %s: its text stream is "
                "learnt anew", run, "writes down" if hears else "does not write down",
                "does" if lm.config.heard_ids is not None else "does not",
            )  # fmt: skip


@torch.no_grad()
def embed_codes(lm: LM, vectors: torch.Tensor, seed: int) -> None:
    """Set every audio embedding table of `lm` from the codec's code vectors [K, card, D]
    (`SplitResidualVQ.code_vectors`): table row c of codebook k = vectors[k, c] through a fixed
    random orthonormal map to the table's width, scaled to unit spread (nn.Embedding's own),
    so that code similarity in the codec is similarity in the LM. The assistant's and the
    user's tables of one codebook are summed in the LM's input: each speaker gets its own map
    (orthogonal subspaces where the width allows), so that the speakers stay apart. The row
    past `card` (the initial token) is kept."""
    config = lm.config
    codebooks, card, width = vectors.shape
    if codebooks < max(config.dep_q, config.n_q - config.dep_q) or card != config.card:
        raise ConfigError(
            f"the codec has {codebooks} codebooks of {card} codes; the LM takes "
            f"{config.dep_q} of {config.card}"
        )
    generator = torch.Generator().manual_seed(seed)

    def maps(dim: int, speakers: int) -> list[torch.Tensor]:
        if speakers * width <= dim:  # orthonormal columns, each speaker its own block
            basis = torch.linalg.qr(torch.randn(dim, speakers * width, generator=generator)).Q
            return [basis[:, s * width : (s + 1) * width].T for s in range(speakers)]
        if width <= dim:  # each its own orthonormal map; the speakers' images may overlap
            return [torch.linalg.qr(torch.randn(dim, width, generator=generator)).Q.T
                    for _ in range(speakers)]  # fmt: skip
        # a wider codec: a projection with orthonormal rows (keeps the largest part)
        return [torch.linalg.qr(torch.randn(width, dim, generator=generator)).Q
                for _ in range(speakers)]  # fmt: skip

    def fill(table: nn.Embedding, k: int, projection: torch.Tensor) -> None:
        rows = vectors[k].float() @ projection  # [card, dim]
        table.weight[:card] = (rows / rows.std().clamp_min(1e-8)).to(table.weight.dtype)

    speakers = maps(config.temporal.dim, 2)
    for i, table in enumerate(lm.emb):  # the assistant's dep_q codebooks, then the user's
        speaker, k = (0, i) if i < config.dep_q else (1, i - config.dep_q)
        fill(cast(nn.Embedding, table), k, speakers[speaker])
    (depth,) = maps(config.depth.dim, 1)
    for j, table in enumerate(lm.depformer_emb):  # the assistant's codebook j, into step j + 1
        fill(cast(nn.Embedding, table), j, depth)


def freeze_user_embeddings(lm: LM) -> None:
    """The user's audio embedding tables are not trained: they stay where they started."""
    for table in lm.emb[lm.config.dep_q :]:
        table.requires_grad_(False)
