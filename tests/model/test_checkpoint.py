"""Checkpoint loading with real files: Kyutai's files load unchanged, `--hf-repo` through an
offline Hugging Face cache, errors that name the file and tensor without loading half a model,
the dtype policy, and no meta tensors left behind."""

from __future__ import annotations

import hashlib
import json
import pathlib
import re
from pathlib import Path

import huggingface_hub
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from model.checkpoint import (
    CODEC_FILE,
    CONFIG_FILE,
    LM_FILE,
    TOKENIZER_FILE,
    default_dtype,
    lm_config_from_kyutai,
    load_codec,
    load_lm,
    load_weights,
    resolve_files,
)
from model.config import tiny_mimi
from model.errors import CheckpointError, ConfigError
from model.lm import LM
from model.sampling import SamplingParams
from tests.model.test_codec import reference_and_ours, speechlike
from tests.model.test_lm_parity import CONFIGS
from tests.reference import require_reference

LM_KWARGS = CONFIGS["moshi-like"]
GEN_CONFIG = {"temp": 0.6, "temp_text": 0.5, "top_k": 100, "top_k_text": 10}


def _reference_lm(kwargs: dict, seed: int = 0) -> nn.Module:
    require_reference()
    from moshi.models.lm import LMModel

    torch.manual_seed(seed)
    return LMModel(device="cpu", dtype=torch.float32, **kwargs).eval()


@pytest.fixture(scope="module")
def mimi_file(tmp_path_factory) -> tuple[nn.Module, Path]:
    """The reference Mimi (tiny shape, fitted codebooks) saved as Kyutai saves it."""
    reference, _ = reference_and_ours(tiny_mimi())
    path = tmp_path_factory.mktemp("mimi") / CODEC_FILE
    save_file(reference.state_dict(), str(path))
    return reference, path


@pytest.fixture(scope="module")
def lm_file(tmp_path_factory) -> tuple[nn.Module, Path]:
    reference = _reference_lm(LM_KWARGS)
    path = tmp_path_factory.mktemp("lm") / LM_FILE
    save_file(reference.state_dict(), str(path))
    return reference, path


def _kyutai_config(**overrides) -> dict:
    """A config.json as Kyutai writes it: the LM kwargs plus file names and generation params."""
    return dict(
        LM_KWARGS,
        moshi_name=LM_FILE,
        mimi_name=CODEC_FILE,
        tokenizer_name=TOKENIZER_FILE,
        model_type="moshi",
        lm_gen_config=GEN_CONFIG,
        **overrides,
    )


def _codes(config, T: int = 10, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, config.card, (2, config.num_streams, T), generator=g)
    codes[:, 0] = torch.randint(0, config.text_card, (2, T), generator=g)
    return codes


def _assert_all_on_cpu(module: nn.Module) -> None:
    tensors = dict(module.named_parameters()) | dict(module.named_buffers())
    elsewhere = {name: t.device for name, t in tensors.items() if t.device.type != "cpu"}
    assert tensors and not elsewhere


# --- Kyutai's files load unchanged ---------------------------------------------------------------


@pytest.mark.parity
def test_kyutai_mimi_file_loads_unchanged(mimi_file) -> None:
    reference, path = mimi_file
    codec = load_codec(path, tiny_mimi())
    pcm = speechlike(2, 4, codec.frame_size, seed=7)
    with torch.no_grad():
        codes = codec.encode(pcm)
        assert torch.equal(codes, reference.encode(pcm))
        torch.testing.assert_close(codec.decode(codes), reference.decode(codes), atol=1e-5, rtol=0)


@pytest.mark.parity
def test_kyutai_lm_file_loads_unchanged(lm_file) -> None:
    reference, path = lm_file
    config = lm_config_from_kyutai(LM_KWARGS)
    loaded = load_lm(path, config)
    expected = LM(config).eval()
    expected.load_state_dict(reference.state_dict(), strict=True)
    codes = _codes(config)
    with torch.no_grad():
        for got, want in zip(loaded(codes), expected(codes), strict=True):
            torch.testing.assert_close(got, want, atol=0, rtol=0, equal_nan=True)
        text_logits, _ = loaded(codes)
        torch.testing.assert_close(
            text_logits, reference(codes).text_logits[:, 0], atol=1e-5, rtol=0, equal_nan=True
        )


def test_a_codec_saved_by_this_project_loads(tmp_path, mimi_file) -> None:
    _, kyutai_path = mimi_file
    codec = load_codec(kyutai_path, tiny_mimi())
    ours = tmp_path / "codec.safetensors"
    save_file(codec.state_dict(), str(ours))
    again = load_codec(ours, tiny_mimi())
    pcm = speechlike(1, 3, codec.frame_size, seed=8)
    with torch.no_grad():
        codes = codec.encode(pcm)
        assert torch.equal(again.encode(pcm), codes)
        assert torch.equal(again.decode(codes), codec.decode(codes))


def test_loading_onto_meta_leaves_no_meta_tensor(mimi_file, lm_file) -> None:
    codec = load_codec(mimi_file[1], tiny_mimi())
    lm = load_lm(lm_file[1], lm_config_from_kyutai(LM_KWARGS))
    _assert_all_on_cpu(codec)
    _assert_all_on_cpu(lm)
    # The codebooks' cached centroids (a buffer no file holds) were computed from the loaded sums.
    codebook = codec.quantizer.rvq_rest.codebook(1)
    usage = codebook.cluster_usage.clamp(min=1e-5)[:, None]
    assert torch.equal(codebook.embedding, codebook.embedding_sum / usage)
    assert codebook.embedding.abs().sum() > 0


def test_config_json_resolves_like_kyutai(tmp_path, lm_file) -> None:
    _, lm_path = lm_file
    config = tmp_path / CONFIG_FILE
    config.write_text(json.dumps(_kyutai_config()))
    codec_path, tokenizer_path = tmp_path / "mimi.safetensors", tmp_path / "tok.model"
    codec_path.write_bytes(b"not read by resolve_files")
    tokenizer_path.write_bytes(b"not read by resolve_files")
    files = resolve_files(
        config=config, lm_weights=lm_path, codec_weights=codec_path, tokenizer=tokenizer_path
    )
    assert (files.lm_weights, files.codec_weights, files.tokenizer) == (
        lm_path,
        codec_path,
        tokenizer_path,
    )
    assert files.lm_config == lm_config_from_kyutai(LM_KWARGS)
    assert files.model_type == "moshi"
    assert files.sampling == SamplingParams(
        text_temperature=0.5, text_top_k=10, audio_temperature=0.6, audio_top_k=100
    )
    load_lm(files.lm_weights, files.lm_config)  # the resolved config fits the file


# --- --hf-repo through the Hugging Face cache, offline -------------------------------------------


def _hf_cache(cache: Path, repo: str, files: dict[str, bytes]) -> Path:
    """The layout huggingface_hub writes: blobs by hash, a snapshot of links, refs/main."""
    root = cache / f"models--{repo.replace('/', '--')}"
    commit = hashlib.sha1(repo.encode()).hexdigest()
    snapshot = root / "snapshots" / commit
    (root / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    for name, data in files.items():
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(Path("..", "..", "blobs", blob.name))
    return snapshot


@pytest.fixture
def hf_snapshot(tmp_path, monkeypatch, lm_file, request) -> Path:
    """A cached copy of "org/moshi-tiny", named by HF_HUB_CACHE or HF_HOME, in offline mode."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    if request.param == "HF_HUB_CACHE":
        cache = tmp_path / "cache"
        monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    else:
        cache = tmp_path / "home" / "hub"
        monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub read its environment when it was imported, before these were set.
    assert str(cache) != huggingface_hub.constants.HF_HUB_CACHE
    return _hf_cache(
        cache,
        "org/moshi-tiny",
        {
            CONFIG_FILE: json.dumps(_kyutai_config()).encode(),
            LM_FILE: lm_file[1].read_bytes(),
            CODEC_FILE: b"codec bytes",
            TOKENIZER_FILE: b"tokenizer bytes",
        },
    )


@pytest.mark.parametrize("hf_snapshot", ["HF_HUB_CACHE", "HF_HOME"], indirect=True)
def test_hf_repo_resolves_from_the_cache_offline(hf_snapshot, lm_file) -> None:
    files = resolve_files(hf_repo="org/moshi-tiny")
    assert files.lm_weights == hf_snapshot / LM_FILE
    assert files.codec_weights.read_bytes() == b"codec bytes"
    assert files.tokenizer.read_bytes() == b"tokenizer bytes"
    assert files.lm_config == lm_config_from_kyutai(LM_KWARGS)
    assert files.sampling.text_top_k == GEN_CONFIG["top_k_text"]
    lm = load_lm(files.lm_weights, files.lm_config)
    assert torch.equal(lm.text_linear.weight, lm_file[0].text_linear.weight)


@pytest.mark.parametrize("hf_snapshot", ["HF_HUB_CACHE"], indirect=True)
def test_a_file_missing_from_the_cache_offline_says_so(hf_snapshot) -> None:
    (hf_snapshot / TOKENIZER_FILE).unlink()
    with pytest.raises(CheckpointError) as info:
        resolve_files(hf_repo="org/moshi-tiny")
    message = str(info.value)
    assert TOKENIZER_FILE in message
    assert "not in the Hugging Face cache" in message and "offline" in message


# --- errors: name the file and the tensor, load nothing ------------------------------------------


@pytest.fixture
def target() -> tuple[LM, dict[str, torch.Tensor]]:
    """A real (not meta) LM and a copy of its weights, to show a failed load changed nothing."""
    torch.manual_seed(1)
    lm = LM(lm_config_from_kyutai(LM_KWARGS))
    return lm, {k: v.clone() for k, v in lm.state_dict().items()}


def _assert_unchanged(lm: LM, before: dict[str, torch.Tensor]) -> None:
    after = lm.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)


def _failed_load(lm: LM, path: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_weights(lm, path)
    message = str(info.value)
    assert str(path) in message
    return message


def test_missing_file(tmp_path, target) -> None:
    lm, before = target
    path = tmp_path / "absent.safetensors"
    assert "no such file" in _failed_load(lm, path)
    _assert_unchanged(lm, before)
    with pytest.raises(CheckpointError, match="absent.safetensors: no such file"):
        resolve_files(lm_weights=path, codec_weights=path, tokenizer=path)


def test_truncated_file(tmp_path, target, lm_file) -> None:
    lm, before = target
    data = lm_file[1].read_bytes()
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(data[: len(data) // 2])
    assert "re-download" in _failed_load(lm, path)
    _assert_unchanged(lm, before)


class _Tripwire:
    """Unpickling this creates a file: proof that a loader ran pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def test_a_pickle_is_refused_and_never_unpickled(tmp_path, target) -> None:
    lm, before = target
    marker = tmp_path / "unpickled"
    path = tmp_path / "model.pt"
    torch.save({"text_linear.weight": torch.zeros(3), "payload": _Tripwire(marker)}, path)
    message = _failed_load(lm, path)
    assert "not a safetensors file" in message
    assert not marker.exists()
    _assert_unchanged(lm, before)
    torch.load(path, weights_only=False)  # the tripwire works: unpickling does create the file
    assert marker.exists()


def test_missing_tensor(tmp_path, target, lm_file) -> None:
    lm, before = target
    state = lm_file[0].state_dict()
    del state["depformer_in.2.weight"]
    path = tmp_path / "missing.safetensors"
    save_file(state, str(path))
    message = _failed_load(lm, path)
    assert "missing 1 tensors: depformer_in.2.weight" in message
    _assert_unchanged(lm, before)


def test_extra_tensor(tmp_path, target, lm_file) -> None:
    lm, before = target
    state = dict(lm_file[0].state_dict(), **{"condition_provider.weight": torch.zeros(2)})
    path = tmp_path / "extra.safetensors"
    save_file(state, str(path))
    message = _failed_load(lm, path)
    assert "1 unexpected tensors: condition_provider.weight" in message
    _assert_unchanged(lm, before)


def test_lm_saved_at_another_dim(tmp_path, target) -> None:
    lm, before = target
    path = tmp_path / "dim48.safetensors"
    save_file(_reference_lm(dict(LM_KWARGS, dim=48)).state_dict(), str(path))
    message = _failed_load(lm, path)
    shapes = re.findall(
        r"tensor (\S+) has shape \(([\d, ]+)\), this model expects \(([\d, ]+)\)", message
    )
    assert shapes
    for name, found, want in shapes:
        assert "48" in found.split(", ") and "64" in want.split(", ")
        assert want == ", ".join(str(n) for n in lm.state_dict()[name].shape)
    _assert_unchanged(lm, before)


def _resolve_with_config(tmp_path: Path, text: str):
    config = tmp_path / CONFIG_FILE
    config.write_text(text)
    weights = tmp_path / "weights"
    weights.write_bytes(b"")
    return resolve_files(
        config=config, lm_weights=weights, codec_weights=weights, tokenizer=weights
    )


def test_config_that_is_not_json(tmp_path) -> None:
    with pytest.raises(CheckpointError, match=f"{CONFIG_FILE}: not a readable JSON config"):
        _resolve_with_config(tmp_path, '{"dim": 64,')


@pytest.mark.parametrize(
    ("config", "match"),
    [
        (_kyutai_config(conditioners={"description": {}}), r"not implement: \['conditioners'\]"),
        ({k: v for k, v in _kyutai_config().items() if k != "dim"}, r"lacks \['dim'\]"),
        (_kyutai_config(positional_embedding="sin"), "positional_embedding='sin'"),
        (dict(_kyutai_config(), lm_gen_config={"temp": -1}), "lm_gen_config"),
    ],
    ids=["conditioners", "no-dim", "sin-positions", "negative-temperature"],
)
def test_config_we_cannot_run(tmp_path, config, match) -> None:
    with pytest.raises(ConfigError, match=match):
        _resolve_with_config(tmp_path, json.dumps(config))


# --- dtype policy --------------------------------------------------------------------------------


def test_default_dtypes() -> None:
    assert default_dtype(torch.device("cpu")) == torch.float32
    assert default_dtype(torch.device("cuda")) == torch.bfloat16  # the device need not exist


def _floating(module: nn.Module) -> set[torch.dtype]:
    tensors = list(module.parameters()) + list(module.buffers())
    return {t.dtype for t in tensors if t.is_floating_point()}


def test_bf16_files_load_as_fp32_on_cpu_unless_asked(tmp_path, lm_file, mimi_file) -> None:
    lm_path, codec_path = tmp_path / "lm.safetensors", tmp_path / "mimi.safetensors"
    bf16 = {k: v.bfloat16() for k, v in lm_file[0].state_dict().items()}
    save_file(bf16, str(lm_path))
    save_file({k: v.bfloat16() for k, v in mimi_file[0].state_dict().items()}, str(codec_path))
    config = lm_config_from_kyutai(LM_KWARGS)

    lm = load_lm(lm_path, config)
    assert _floating(lm) == {torch.float32}
    assert torch.equal(lm.text_linear.weight, bf16["text_linear.weight"].float())
    assert _floating(load_lm(lm_path, config, dtype=torch.bfloat16)) == {torch.bfloat16}
    # Kyutai runs Mimi in fp32 whatever the LM's dtype.
    assert _floating(load_codec(codec_path, tiny_mimi())) == {torch.float32}
    assert _floating(load_codec(codec_path, tiny_mimi(), dtype=torch.bfloat16)) == {torch.bfloat16}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_lm_is_bf16_and_the_codec_fp32(lm_file, mimi_file) -> None:
    lm = load_lm(lm_file[1], lm_config_from_kyutai(LM_KWARGS), device="cuda")
    codec = load_codec(mimi_file[1], tiny_mimi(), device="cuda")
    assert _floating(lm) == {torch.bfloat16} and _floating(codec) == {torch.float32}
    for module in (lm, codec):
        assert {t.device.type for t in list(module.parameters()) + list(module.buffers())} == {
            "cuda"
        }
