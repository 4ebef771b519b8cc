"""Kyutai's config formats both ways, and a bundle's file set read back."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from model.bundle import (
    CARD_FILE,
    CODEC_CONFIG_FILE,
    CODEC_FILE,
    CONFIG_FILE,
    LM_FILE,
    TOKENIZER_FILE,
    bundle_files,
    bundle_summary,
    mimi_config_from_dict,
    save_safetensors,
)
from model.config import demo_lm, demo_mimi, moshi_7b, tiny_lm, tiny_mimi
from model.errors import CheckpointError
from model.kyutai_config import lm_config_from_kyutai, lm_config_to_kyutai
from model.lm import LM


def test_demo_lm_config_survives_kyutais_config_format() -> None:
    config = demo_lm(text_card=700)
    assert lm_config_from_kyutai(lm_config_to_kyutai(config)) == config
    assert 10e6 < sum(p.numel() for p in LM(config).parameters()) < 12e6  # 22 MB in bf16


@pytest.mark.parametrize("config", [moshi_7b(), tiny_lm(), tiny_lm(dep_q=8, n_q=16)])
def test_lm_configs_translate_both_ways(config) -> None:
    assert lm_config_from_kyutai(lm_config_to_kyutai(config)) == config


@pytest.mark.parametrize("config", [demo_mimi(), tiny_mimi()])
def test_codec_config_reads_back_from_json(config) -> None:
    raw = json.loads(json.dumps(dataclasses.asdict(config)))
    assert mimi_config_from_dict(raw) == config
    with pytest.raises(CheckpointError, match="not a codec config"):
        mimi_config_from_dict({"seanet": {}})


def test_a_bundle_reads_back(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    lm_config, codec_config = tiny_lm(), tiny_mimi()
    save_safetensors(LM(lm_config).state_dict(), tmp_path / LM_FILE, torch.bfloat16)
    (tmp_path / CODEC_FILE).write_bytes(b"")  # bundle_files checks that files exist, no more
    (tmp_path / TOKENIZER_FILE).write_bytes(b"")
    kyutai = lm_config_to_kyutai(lm_config) | {"lm_gen_config": {"temp": 0.5}}
    (tmp_path / CONFIG_FILE).write_text(json.dumps(kyutai))
    with pytest.raises(CheckpointError, match=f"{CODEC_CONFIG_FILE} missing .*train export"):
        bundle_files(tmp_path)
    (tmp_path / CODEC_CONFIG_FILE).write_text("{")
    with pytest.raises(CheckpointError, match="cannot read"):
        bundle_files(tmp_path)
    (tmp_path / CODEC_CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(codec_config)))
    files = bundle_files(tmp_path)
    assert (files.lm_config, files.codec_config) == (lm_config, codec_config)
    assert files.lm_weights == tmp_path / LM_FILE and files.sampling.audio_temperature == 0.5
    assert (tmp_path / LM_FILE).stat().st_mode & 0o444 == 0o444  # a wheel of it is readable


def test_a_bundles_one_line_comes_from_its_card(tmp_path: Path) -> None:
    assert bundle_summary(tmp_path) is None  # no card
    (tmp_path / CARD_FILE).write_text("# a card\n\nno such line\n")
    assert bundle_summary(tmp_path) is None
    (tmp_path / CARD_FILE).write_bytes(b"\xff\xfe not text")
    assert bundle_summary(tmp_path) is None
    (tmp_path / CARD_FILE).write_text("# a card\n\n**In one line:** a model that counts.\n")
    assert bundle_summary(tmp_path) == "a model that counts"
