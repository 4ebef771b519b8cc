"""The engine's frame path: one graph for torch.compile, static buffers, the input boundary."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from app.core.engine import BatchEngine, FrameStates, frame_path
from app.core.models import random_model
from model import SamplingParams
from model.errors import AudioInputError


@pytest.fixture(scope="module")
def model():
    return random_model(torch.device("cpu"), SamplingParams(seed=4))


def _states(model, slots: int) -> FrameStates:
    codec, lm = model.codec, model.lm
    return FrameStates(
        codec.init_encoder_state(slots),
        lm.init_state(slots, SamplingParams(seed=4)),
        codec.init_decoder_state(slots),
    )


def _inputs(frame_size: int, frames: int, slots: int) -> list[torch.Tensor]:
    """Staged inputs [slots, frame_size + 1]: speech-like noise, slot 1 skipping frame 3."""
    g = torch.Generator().manual_seed(0)
    staged = []
    for i in range(frames):
        x = torch.zeros(slots, frame_size + 1)
        x[:, :frame_size] = 0.2 * torch.randn(slots, frame_size, generator=g)
        x[:, frame_size] = 1.0
        if i == 3:
            x[1, frame_size] = 0.0
        staged.append(x)
    return staged


# aot_eager traces the whole frame through dynamo and AOTAutograd's functionalisation (in-place
# state updates included) in ~12 s of CPU; inductor also generates C++ kernels, ~3 min of CPU on
# a cold cache, so it runs only when asked: ANTIPHON_COMPILE_BACKEND=inductor.
BACKEND = os.environ.get("ANTIPHON_COMPILE_BACKEND", "aot_eager")


# Inductor's own code (torch 2.13) calls the deprecated torch.jit.script_method.
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_whole_frame_compiles_as_one_graph_and_matches_eager(model) -> None:
    torch._dynamo.reset()
    codec, lm, slots = model.codec, model.lm, 2
    eager_states, compiled_states = _states(model, slots), _states(model, slots)
    compiled = torch.compile(frame_path, fullgraph=True, backend=BACKEND)
    width = codec.frame_size + 1
    texts = []
    for staged in _inputs(codec.frame_size, frames=6, slots=slots):
        want, got = torch.zeros(slots, width), torch.zeros(slots, width)
        with torch.no_grad():
            frame_path(codec, lm, eager_states, staged, want)
            compiled(codec, lm, compiled_states, staged, got)
        n = codec.frame_size
        assert torch.equal(got[:, n:].view(torch.int32), want[:, n:].view(torch.int32))
        exact = BACKEND != "inductor"  # inductor fuses differently: ~1e-7 apart
        torch.testing.assert_close(got[:, :n], want[:, :n], rtol=0, atol=0 if exact else 1e-5)
        texts.append(want[:, n:].view(torch.int32)[:, 0].tolist())
    # The text became ready and the skipped frame left slot 1 behind slot 0.
    assert any(t >= 0 for t, _ in texts) and texts[3][1] == -1


def test_engine_uses_one_packed_buffer_each_way(model) -> None:
    """The reply and text come back through the static host buffer, not per-frame tensors."""
    engine = BatchEngine(model, slots=2)
    a, b = engine.open(SamplingParams(seed=1)), engine.open(SamplingParams(seed=2))
    host_out = engine._host_out.data_ptr()
    rng = np.random.default_rng(0)
    for _ in range(4):
        frames = {
            s: (0.2 * rng.standard_normal(engine.frame_size)).astype(np.float32) for s in (a, b)
        }
        results = engine.step(frames)
    assert engine._host_out.data_ptr() == host_out
    for slot, result in results.items():
        np.testing.assert_array_equal(result.pcm, engine._host_out.numpy()[slot, :-1])
        assert result.text_token == int(engine._host_out.numpy()[slot, -1:].view(np.int32)[0])
        assert result.encode_ms > 0 and result.lm_ms > 0 and result.decode_ms > 0


def test_bad_frames_are_refused_at_the_boundary(model) -> None:
    engine = BatchEngine(model, slots=1)
    slot = engine.open()
    with pytest.raises(AudioInputError, match="slot 0: audio contains NaN"):
        engine.step({slot: np.full(engine.frame_size, np.nan, dtype=np.float32)})
    with pytest.raises(ValueError, match="re-frame"):
        engine.step({slot: np.zeros(100, dtype=np.float32)})


def test_cuda_graph_needs_cuda(model) -> None:
    from model.errors import ConfigError

    with pytest.raises(ConfigError, match="CUDA device"):
        BatchEngine(model, slots=1, cuda_graph=True)


def test_8bit_options_reach_the_engine() -> None:
    import argparse

    from app.core.models import add_model_arguments, load_from_args
    from model.quantize import Int8Linear

    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    args = parser.parse_args(["--device", "cpu", "--kv-cache", "int8", "--int8-weights"])
    loaded = load_from_args(args)
    assert isinstance(loaded.lm.text_linear, Int8Linear)
    engine = BatchEngine(loaded, slots=1)
    assert engine._states.lm.temporal.caches[0].keys.dtype == torch.int8
    slot = engine.open()
    rng = np.random.default_rng(1)
    for _ in range(4):
        result = engine.step(
            {slot: (0.2 * rng.standard_normal(engine.frame_size)).astype(np.float32)}
        )
    assert np.isfinite(result[slot].pcm).all() and result[slot].text_token >= 0
    with pytest.raises(SystemExit):
        parser.parse_args(["--kv-cache", "int4"])


@pytest.mark.parametrize("weights", ["float32", "bfloat16", "float16"])
def test_codec_weights_option_reaches_the_codec(weights: str) -> None:
    import argparse

    from app.core.models import add_model_arguments, load_from_args
    from model.quantize import Bf16Linear, Fp16Linear

    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    loaded = load_from_args(parser.parse_args(["--device", "cpu", "--codec-weights", weights]))
    linear1 = loaded.codec.encoder_transformer.layers[0].linear1
    assert isinstance(linear1, Bf16Linear) == (weights == "bfloat16")
    assert isinstance(linear1, Fp16Linear) == (weights == "float16")
    engine = BatchEngine(loaded, slots=1)
    slot = engine.open()
    rng = np.random.default_rng(1)
    for _ in range(3):
        frame = (0.2 * rng.standard_normal(engine.frame_size)).astype(np.float32)
        result = engine.step({slot: frame})
    assert np.isfinite(result[slot].pcm).all()


def test_compile_option_runs_the_frame_as_one_compiled_graph(monkeypatch) -> None:
    """--compile reaches the engine, whose frames then match eager ones and are timed whole.
    aot_eager traces the same single graph as inductor (fullgraph) without generating C++."""
    import argparse

    from app.core.models import add_model_arguments, load_from_args

    monkeypatch.setenv("ANTIPHON_COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    compiled = BatchEngine(load_from_args(parser.parse_args(["--device", "cpu", "--compile"])), 1)
    eager = BatchEngine(load_from_args(parser.parse_args(["--device", "cpu"])), 1)
    assert compiled.model.compiled and compiled._compiled is not None and eager._compiled is None
    slots = compiled.open(SamplingParams(seed=3)), eager.open(SamplingParams(seed=3))
    rng = np.random.default_rng(2)
    for _ in range(5):
        pcm = (0.2 * rng.standard_normal(eager.frame_size)).astype(np.float32)
        got = compiled.step({slots[0]: pcm})[slots[0]]
        want = eager.step({slots[1]: pcm})[slots[1]]
        np.testing.assert_array_equal(got.pcm, want.pcm)
        assert got.text_token == want.text_token
    assert got.encode_ms == 0 and got.decode_ms == 0 and got.lm_ms > 0  # one graph, timed whole
