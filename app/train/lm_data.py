"""The dialogues as the LM's token streams: encoded once by the trained codec (both channels, in
batches, longest first, resumable), cached by fingerprint, with the user's heard words for the
hearing head, and cut into training windows batched by length (`WindowSampler`).

Each dialogue becomes int16 streams [1 + 2K, frames] at the codec's frame rate: the inner
monologue (`app.train.monologue.text_tokens`), the assistant's K codes, the user's K codes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from app.core.files import write_atomically
from model.codec import Codec
from model.config import LMConfig
from model.errors import ConfigError
from model.tokenizer import TextTokenizer

from . import loop
from .codec import load_trained_codec
from .dialogues import manifest_rows, read_description, read_dialogue, read_manifest
from .monologue import answer_frames, heard_tokens, hearing_text_tokens, text_tokens

log = logging.getLogger(__name__)

IGNORE = -1  # target id of positions without a target (also "no input" for the embeddings)


def _fingerprint(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()


class _Encoded:
    """Dialogues encoded so far (index in the manifest -> streams), saved every few minutes, so
    that an encoding that is stopped goes on where it stopped (with the same fingerprint)."""

    SAVE_EVERY_S = 180.0

    def __init__(self, path: Path | None, fingerprint: str) -> None:
        self.path, self.fingerprint = path, fingerprint
        self.done: dict[int, np.ndarray] = {}
        self.saved = time.monotonic()
        if path is not None and path.is_file():
            stored = np.load(path)
            if str(stored["fingerprint"]) == fingerprint:
                parts = np.split(stored["tokens"], np.cumsum(stored["lengths"])[:-1], axis=1)
                self.done = dict(zip(stored["indices"].tolist(), parts, strict=True))
                log.info("encoding: %d dialogues already done (%s)", len(self.done), path)

    def add(self, index: int, streams: np.ndarray) -> None:
        self.done[index] = streams
        if self.path is not None and time.monotonic() - self.saved > self.SAVE_EVERY_S:
            self.save()

    def save(self) -> None:
        assert self.path is not None
        indices = sorted(self.done)
        tokens = np.concatenate([self.done[i] for i in indices], axis=1)
        lengths = np.array([self.done[i].shape[1] for i in indices])
        write_atomically(
            self.path,
            lambda tmp: np.savez(
                tmp, tokens=tokens, lengths=lengths, indices=np.array(indices),
                fingerprint=np.array(self.fingerprint),
            ),
        )  # fmt: skip
        self.saved = time.monotonic()


@torch.no_grad()
def encode_dialogues(
    folder: str | Path,
    codec: Codec,
    tokenizer: TextTokenizer,
    num_codebooks: int,
    device: torch.device,
    batch: int | None = None,
    progress: bool = True,
    bf16: bool = False,
    encoded: _Encoded | None = None,
) -> list[np.ndarray]:
    """Each dialogue as int16 [1 + 2 * num_codebooks, frames]: text, assistant, user; the
    user's streams one frame ahead (column t holds the user's frame t + 1, -1 at the end), so
    that teacher forcing conditions on what `LM.step` hears (`model.lm.user_ahead`).

    With `bf16`, the codec's convolutions run under bf16 autocast (2.4x faster on this CPU;
    the quantizer stays fp32): `train lm` measures and logs how many codes differ from fp32.
    `batch` dialogues at a time; by default one on a CPU, its two channels a batch of their own
    (on a 2-core CPU, 8 of the longest dialogues took 13.8 s together and 9.4 s one by one: the
    tensors of a batch of 40 s dialogues are gigabytes), 8 elsewhere. Dialogues are encoded
    longest first (a batch pads to its longest: similar lengths waste less); `encoded` keeps
    what is done, to go on after a stop."""
    codec = codec.to(device).eval()
    batch = batch or (1 if device.type == "cpu" else 8)
    autocast = loop.autocast(device, enabled=bf16)
    frame_rate, frame_size = codec.config.frame_rate, codec.frame_size
    files = read_manifest(folder)
    encoded = encoded or _Encoded(None, "")
    # longest first (by file size: the time goes with the audio's length)
    sizes = {i: files[i].stat().st_size for i in set(range(len(files))) - set(encoded.done)}
    order = sorted(sizes, key=lambda i: -sizes[i])
    batches = [order[first : first + batch] for first in range(0, len(order), batch)]
    every = max(1, len(batches) // 20)  # without a bar: a log line per 5%
    total, began = sum(sizes.values()), time.monotonic()
    done_bytes = 0
    with loop.stoppable("encoding") as stop_requested:
        for b, chosen in enumerate(tqdm(batches, desc="encoding", disable=not progress)):
            if not progress and b % every == 0:
                elapsed = time.monotonic() - began
                left = elapsed * (total - done_bytes) / done_bytes if done_bytes else None
                log.info(
                    "encoding %s: %d/%d dialogues, %.0f min so far, %s",
                    folder, len(encoded.done), len(files), elapsed / 60,
                    "time left unknown yet" if left is None else f"about {left / 60:.0f} min left",
                )  # fmt: skip
            done_bytes += sum(sizes[i] for i in chosen)
            loaded = [read_dialogue(files[i]) for i in chosen]
            frames = [math.ceil(pcm.shape[1] / frame_size) for pcm, _ in loaded]
            stereo = np.zeros((len(loaded), 2, max(frames) * frame_size), dtype=np.float32)
            for i, (pcm, _) in enumerate(loaded):
                stereo[i, :, : pcm.shape[1]] = pcm
            pcm_batch = torch.from_numpy(stereo).to(device).view(-1, 1, stereo.shape[-1])
            # [2B, K, frames]; the codec is causal, so the zero padding changes no earlier frame
            with autocast:
                latent = codec.latent(pcm_batch)
            found = codec.quantizer.encode(latent, num_codebooks)
            codes = found.reshape(len(loaded), 2 * num_codebooks, -1).cpu().numpy()
            described = zip(chosen, loaded, frames, strict=True)
            for i, (index, (_, description), n) in enumerate(described):
                text = text_tokens(description["alignments"], tokenizer.encode, n, frame_rate)
                assistant, user = codes[i, :num_codebooks, :n], codes[i, num_codebooks:, :n]
                # the user one frame ahead, as `LM.step` hears it (model.lm.user_ahead)
                user = np.concatenate([user[:, 1:], np.full_like(user[:, :1], IGNORE)], axis=1)
                streams = np.concatenate([np.array(text)[None], assistant, user]).astype(np.int16)
                encoded.add(index, streams)
            if stop_requested():  # this batch is done: keep what is done, then stop
                if encoded.path is not None:
                    encoded.save()
                loop.stop_now("encoding", f"{len(encoded.done)}/{len(files)} dialogues")
    return [encoded.done[i] for i in range(len(files))]


def _dialogue_ids(data: Path) -> list[str]:
    """What makes each listed dialogue itself: its description (seed, index, voice, words) and
    its audio file's size and time of writing (`train data` never writes a listed one again,
    so a file written anew, even the same, is encoded anew)."""
    ids = []
    for wav in read_manifest(data):
        try:
            audio = wav.stat()
            ids.append(
                f"{_fingerprint(wav.with_suffix('.json'))[:20]}-{audio.st_size}-{audio.st_mtime_ns}"
            )
        except OSError as error:
            raise ConfigError(
                f"{data}: {error}; generate the dialogues again with `train data`"
            ) from error
    return ids


def load_or_encode(
    data: Path,
    codec_dir: Path,
    tokenizer: TextTokenizer,
    num_codebooks: int,
    device: torch.device,
    cache: Path,
    progress: bool = True,
    bf16: bool = False,
) -> list[np.ndarray]:
    """The token streams of a dialogue folder, cached in `cache`; encoded now if missing or
    stale (another codec, tokenizer, set of dialogues or precision). When only the set of
    dialogues changed (a folder grown with `train data --count`), the dialogues the cache
    already holds are taken from it and only the others are encoded."""
    precision = "-bf16" if bf16 else ""
    # what the tokens depend on: the codec, the tokenizer and the precision (`base`), and each
    # dialogue (`ids`); a stopped encoding's partial file holds indices, valid for these ids only
    base = _fingerprint(codec_dir / "codec.safetensors", tokenizer.path) + precision
    ids = _dialogue_ids(data)
    fingerprint = base + "-" + hashlib.sha256("\n".join(ids).encode()).hexdigest()
    reusable: dict[str, np.ndarray] = {}
    if cache.is_file():
        stored = np.load(cache)
        if "base" in stored and str(stored["base"]) == base:  # else nothing in it is of use
            streams = np.split(stored["tokens"], np.cumsum(stored["lengths"])[:-1], axis=1)
            if stored["ids"].tolist() == ids:
                return streams
            reusable = dict(zip(stored["ids"].tolist(), streams, strict=True))
        log.info("%s is stale: encoding again", cache)
    codec = load_trained_codec(codec_dir, device)
    partial_path = Path(cache).with_suffix(".partial.npz")
    partial = _Encoded(partial_path, fingerprint)
    taken = [i for i, key in enumerate(ids) if key in reusable and i not in partial.done]
    for index in taken:
        partial.done[index] = reusable[ids[index]]
    if reusable:
        log.info("encoding: %d of %d dialogues taken from %s", len(taken), len(ids), cache)
    streams = encode_dialogues(
        data, codec, tokenizer, num_codebooks, device, progress=progress, bf16=bf16,
        encoded=partial,
    )  # fmt: skip
    partial.save()  # all of it, before the sample below (which can be stopped too)
    if bf16:  # what the bf16 convolutions changed: the codes of a few dialogues in fp32 too
        sample = Path(cache).with_suffix(".fp32-sample")
        _sample_folder(data, sample, count=4)
        exact = encode_dialogues(sample, codec, tokenizer, num_codebooks, device, progress=False)
        same = [
            float(
                np.mean(
                    np.concatenate(
                        [a[k] == b[k] for a, b in zip(streams[: len(exact)], exact, strict=True)]
                    )
                )
            )
            for k in range(1, 1 + 2 * num_codebooks)
        ]
        log.info("bf16 encoding: share of codes equal to fp32, per stream: %s",
                 [round(x, 3) for x in same])  # fmt: skip
    write_atomically(
        cache,
        lambda tmp: np.savez(
            tmp, tokens=np.concatenate(streams, axis=1),
            lengths=np.array([s.shape[1] for s in streams]), base=np.array(base),
            ids=np.array(ids),
        ),
    )  # fmt: skip
    partial_path.unlink(missing_ok=True)
    return streams


def with_training_rows(
    data: Path,
    streams: list[np.ndarray],
    tokenizer: TextTokenizer,
    frame_rate: float,
    delay_frames: int,
    monologue_hears: bool = False,
) -> list[np.ndarray]:
    """Each dialogue's streams with two more rows, from the dialogues' alignments (seconds, no
    codec): the user's words as the hearing head's targets (`heard_tokens`), and the marks of
    the text tokens that make an answer right (`answer_frames`). With `monologue_hears`, the
    text row is laid out again with the user's words written down in it
    (`hearing_text_tokens`; the cache keeps the plain monologue)."""
    out = []
    for path, tokens in zip(read_manifest(data)[: len(streams)], streams, strict=True):
        description = read_description(path)
        frames = tokens.shape[1]
        if monologue_hears:
            tokens = tokens.copy()
            tokens[0] = hearing_text_tokens(
                description["alignments"], tokenizer.encode, frames, frame_rate, delay_frames
            )
        heard = heard_tokens(
            description["alignments"], tokenizer.encode, frames, frame_rate, delay_frames
        )
        answer = answer_frames(description, tokenizer.encode, frames, frame_rate)
        rows = np.array([heard, answer], dtype=tokens.dtype)
        out.append(np.concatenate([tokens, rows]))
    return out


def _sample_folder(data: Path, folder: Path, count: int) -> None:
    """A folder listing the first `count` dialogues of `data` (a manifest of links)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = manifest_rows(data)[:count]
    for row in rows:
        name = Path(row["path"])
        for suffix in (name.suffix, ".json"):
            link = folder / name.with_suffix(suffix)
            if not link.exists():
                link.symlink_to((Path(data) / name.with_suffix(suffix)).resolve())
    (folder / "manifest.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def codes_used(streams: list[np.ndarray], num_codebooks: int) -> list[int]:
    """How many distinct codes each of the assistant's codebooks uses over all dialogues."""
    return [
        len(np.unique(np.concatenate([s[1 + k] for s in streams]))) for k in range(num_codebooks)
    ]


def check_live_codes(used: list[int], codebook_size: int, minimum: float = 0.05) -> None:
    """Refuse a codec whose codes are nearly dead: an LM learns nothing about audio from it
    (on a codec in its warm-up, with one live code, the semantic loss fell to 4e-7 in 75
    steps)."""
    dead = [k for k, n in enumerate(used) if n < minimum * codebook_size]
    if dead:
        raise ConfigError(
            f"the codec's codebooks {dead} use only {[used[k] for k in dead]} of "
            f"{codebook_size} codes on these dialogues: train the codec longer (its log.jsonl "
            "shows codes_used), or pass --allow-dead-codes"
        )


class WindowSampler:
    """Training windows batched by length, so that short dialogues are not padded to long ones.

    A window is a whole dialogue, or a crop of `frames` of a longer one (from its start half of
    the time, as a conversation starts at inference). Windows fall into buckets of `bucket`
    frames by length; a step takes one bucket (chosen with the odds of a random dialogue) and
    fills `tokens` frames with windows from it. With 250-frame windows and no buckets, 34% of
    every batch was padding."""

    def __init__(self, streams: list[np.ndarray], frames: int, tokens: int, bucket: int = 25):
        self.streams, self.frames, self.tokens = streams, frames, tokens
        lengths = np.array([min(s.shape[1], frames) for s in streams])
        self.edges = np.minimum(frames, -(-lengths // bucket) * bucket)  # bucket's longest
        self.members = {int(e): np.flatnonzero(self.edges == e) for e in np.unique(self.edges)}

    def batch(self, generator: torch.Generator) -> torch.Tensor:
        """[n, streams, T] int64, IGNORE past a dialogue's end; n * T <= tokens."""
        first = int(torch.randint(0, len(self.streams), (1,), generator=generator))
        T = int(self.edges[first])
        members = self.members[T]
        n = max(1, self.tokens // T)
        picks = [first] + [
            int(members[int(torch.randint(0, len(members), (1,), generator=generator))])
            for _ in range(n - 1)
        ]
        out = np.full((n, self.streams[0].shape[0], T), IGNORE, dtype=np.int64)
        for i, index in enumerate(picks):
            tokens = self.streams[index]
            length = tokens.shape[1]
            start = 0
            if length > T and torch.rand(1, generator=generator).item() < 0.5:
                start = int(torch.randint(0, length - T + 1, (1,), generator=generator))
            window = tokens[:, start : start + T]
            out[i, :, : window.shape[1]] = window
        return torch.from_numpy(out)


def noisy_user_codes(
    codes: torch.Tensor,
    config: LMConfig,
    semantic: float,
    acoustic: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """A training batch [B, streams, T] with a share of the user's codes replaced by random
    ones: `semantic` of the first codebook's, `acoustic` of the others'. The same words in
    another voice or room give other codes, the acoustic codebooks' most of all; an LM that sees
    every code exactly learns its training dialogues by heart from them (held-out hearing far
    behind the training dialogues'). IGNORE (no input) stays; the assistant's rows are not
    touched."""
    if semantic <= 0 and acoustic <= 0:
        return codes
    first, count = 1 + config.dep_q, config.user_codebooks
    user = codes[:, first : first + count]
    share = torch.full((count, 1), acoustic)
    share[0] = semantic
    hit = (torch.rand(user.shape, generator=generator) < share) & (user >= 0)
    random = torch.randint(0, config.card, user.shape, generator=generator)
    out = codes.clone()
    out[:, first : first + count] = torch.where(hit, random, user)
    return out
