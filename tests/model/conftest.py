"""Fixtures shared by the model tests."""

import pytest
import torch

from model.codec import Codec
from model.config import tiny_mimi
from tests.model.test_codec import fit_codebooks


@pytest.fixture(scope="module")
def fp32_codec() -> Codec:
    """The tiny codec with codebooks fitted to its latents (codes vary), for the bf16/fp16 tests."""
    torch.manual_seed(0)
    codec = Codec(tiny_mimi()).eval()
    for name, buffer in codec.named_buffers():
        if name.endswith("cluster_usage"):
            buffer.uniform_(0.5, 2.0)
    fit_codebooks(codec)  # codes that vary, so a flipped code would show
    return codec
