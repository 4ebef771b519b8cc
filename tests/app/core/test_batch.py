"""Batched serving: per-slot join, skip and independence from batch neighbours."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.core.engine import BatchEngine, NoFreeSlot
from app.core.models import random_model
from model import SamplingParams


@pytest.fixture(scope="module")
def model():
    return random_model(torch.device("cpu"), SamplingParams())


def _audio(seed: int, frames: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.2 * rng.standard_normal((frames, 1920))).astype(np.float32)


def _alone(model, audio: np.ndarray, params: SamplingParams) -> list:
    engine = BatchEngine(model, slots=4)
    slot = engine.open(params)
    return [engine.step({slot: frame})[slot] for frame in audio]


def test_each_session_equals_itself_run_alone(model) -> None:
    """4 sessions, different audio and seeds, joining at different times, one skipping."""
    engine = BatchEngine(model, slots=4)
    audio = [_audio(i, 12) for i in range(4)]
    params = [SamplingParams(seed=10 + i) for i in range(4)]
    outputs: dict[int, list] = {i: [] for i in range(4)}
    slots: dict[int, int] = {}
    position = dict.fromkeys(range(4), 0)
    for step in range(16):
        for session in range(4):
            if step == session and session not in slots:  # session i joins at step i
                slots[session] = engine.open(params[session])
        frames = {}
        for session, slot in slots.items():
            if session == 2 and step == 6:
                continue  # session 2's frame did not arrive this step
            if position[session] < 12:
                frames[slot] = audio[session][position[session]]
                position[session] += 1
        results = engine.step(frames)
        by_slot = {slot: session for session, slot in slots.items()}
        for slot, result in results.items():
            outputs[by_slot[slot]].append(result)
    for session in range(4):
        alone = _alone(model, audio[session], params[session])
        assert len(outputs[session]) == 12
        for a, b in zip(outputs[session], alone, strict=True):
            assert a.text_token == b.text_token
            np.testing.assert_array_equal(a.pcm, b.pcm)


def test_joining_resets_only_its_slot_and_closing_frees_it(model) -> None:
    engine = BatchEngine(model, slots=2)
    first = engine.open(SamplingParams(seed=1))
    audio = _audio(5, 6)
    before = [engine.step({first: frame})[first] for frame in audio[:3]]
    second = engine.open(SamplingParams(seed=2))  # must not disturb the first
    after = [engine.step({first: frame, second: frame})[first] for frame in audio[3:]]
    alone = _alone(model, audio, SamplingParams(seed=1))
    for a, b in zip(before + after, alone, strict=True):
        np.testing.assert_array_equal(a.pcm, b.pcm)
    with pytest.raises(NoFreeSlot):
        engine.open()
    engine.close(second)
    assert engine.free_slots == 1 and engine.open() == second
