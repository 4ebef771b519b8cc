"""The reference `moshi` package's side of `antiphon bench`, and nothing else.

This is the one product module that imports the reference package (a test-only oracle, see
docs/architecture.md): `app.bench.cli` imports it lazily, only when a comparison is asked for,
so that `antiphon bench --no-reference` and every other command run without `moshi` installed.

The reference models are built from our configs written as Kyutai's keyword configs, with random
weights; `our_codec_state` / `our_lm_state` hand those same weights to our modules.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import torch
from moshi.models.compression import MimiModel
from moshi.models.lm import LMGen, LMModel
from moshi.models.loaders import _lm_kwargs, get_mimi

from model.config import LMConfig, MimiConfig, moshi_7b
from model.kyutai_config import kyutai_mimi_config, lm_config_from_kyutai, lm_config_to_kyutai
from model.kyutai_names import codec_key_from_kyutai
from model.sampling import SamplingParams

from .stream import Stream


def kyutai_lm_kwargs(config: LMConfig) -> dict[str, Any]:
    """Our LM config as Kyutai's keyword config: the released one for the 7B, else translated.

    Checked by translating back with `lm_config_from_kyutai`, the path a released config.json
    takes, so both sides are built from the same configuration.
    """
    if config == moshi_7b():
        kwargs = dict(_lm_kwargs)
    else:  # the depth transformer's context: one step per codebook, as Kyutai's loader sets it
        kwargs = lm_config_to_kyutai(config) | {"depformer_context": config.dep_q}
    translated = lm_config_from_kyutai(kwargs)
    assert translated == config, f"{asdict(translated)} != {asdict(config)}"
    return kwargs


class Reference:
    """Kyutai's Mimi (and LM) with random weights, streamed through its own API."""

    def __init__(
        self,
        codec_config: MimiConfig,
        lm_config: LMConfig | None,
        device: torch.device,
        dtype: torch.dtype,
        sampling: SamplingParams,
    ) -> None:
        # Built in float32 on the CPU (small), random codebooks (the loader leaves them empty),
        # then moved: our codec copies these weights before it is moved the same way.
        self.mimi: MimiModel = get_mimi(
            None, kyutai_mimi_config(codec_config), num_codebooks=codec_config.num_codebooks
        )
        state = self.mimi.state_dict()
        for name, tensor in state.items():
            if name.endswith("embedding_sum"):
                tensor.normal_()
            elif name.endswith("cluster_usage"):
                tensor.uniform_(0.5, 2.0)
        self.mimi.load_state_dict(state)
        self.our_codec_state = {codec_key_from_kyutai(k): v.clone() for k, v in state.items()}
        self.mimi = self.mimi.to(device, dtype).eval()

        self.lm: LMModel | None = None
        self.lm_gen: LMGen | None = None
        if lm_config is not None:
            # Built on the device: a random 7B on the CPU takes minutes.
            kwargs = kyutai_lm_kwargs(lm_config)
            self.lm = LMModel(device=device, dtype=dtype, **kwargs).eval()
            self.lm_gen = LMGen(
                self.lm,
                temp=sampling.audio_temperature,
                temp_text=sampling.text_temperature,
                top_k=sampling.audio_top_k,
                top_k_text=sampling.text_top_k,
            )

    def our_lm_state(self) -> dict[str, torch.Tensor]:
        """The LM weights under our names (the same tensors: ours loads them with assign)."""
        assert self.lm is not None
        return self.lm.state_dict()

    @contextlib.contextmanager
    def stream(self, batch_size: int) -> Iterator[Stream]:
        with contextlib.ExitStack() as stack:
            stack.enter_context(self.mimi.streaming(batch_size))
            lm_step = None
            if self.lm_gen is not None:
                stack.enter_context(self.lm_gen.streaming(batch_size))
                lm_gen = self.lm_gen

                def lm_step(codes: torch.Tensor) -> torch.Tensor | None:
                    tokens = lm_gen.step(codes)  # [B, 1 + dep_q, 1], None until delays pass
                    return None if tokens is None else tokens[:, 1:]

            yield Stream(encode=self.mimi.encode, lm=lm_step, decode=self.mimi.decode)
