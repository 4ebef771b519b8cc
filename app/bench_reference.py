"""The reference `moshi` package's side of `antiphon bench`, and nothing else.

This is the one product module that imports the reference package (a test-only oracle, see
ARCHITECTURE.md): `app.bench` imports it lazily, only when a comparison is asked for, so that
`antiphon bench --no-reference` and every other command run without `moshi` installed.

The reference models are built from our configs written as Kyutai's keyword configs, with random
weights; `our_codec_state` / `our_lm_state` hand those same weights to our modules.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict

import torch
from moshi.models.compression import MimiModel
from moshi.models.lm import LMGen, LMModel
from moshi.models.loaders import _lm_kwargs, get_mimi

from model.checkpoint import lm_config_from_kyutai
from model.config import LMConfig, MimiConfig, moshi_7b
from model.kyutai_names import codec_key_from_kyutai
from model.sampling import SamplingParams

from .bench import Stream


def kyutai_mimi_config(config: MimiConfig) -> dict:
    """Our codec config written as the reference loader's `mimi_config` dict."""
    seanet, tr = config.seanet, config.transformer
    seanet_kw = dict(
        channels=1,
        dimension=seanet.dimension,
        causal=True,
        n_filters=seanet.n_filters,
        n_residual_layers=seanet.n_residual_layers,
        activation="ELU",
        compress=seanet.compress,
        dilation_base=seanet.dilation_base,
        disable_norm_outer_blocks=0,
        kernel_size=seanet.kernel_size,
        residual_kernel_size=seanet.residual_kernel_size,
        last_kernel_size=seanet.last_kernel_size,
        norm="none",
        pad_mode="constant",
        ratios=list(seanet.ratios),
        true_skip=True,
    )
    return dict(
        sample_rate=config.sample_rate,
        channels=1,
        frame_rate=config.frame_rate,
        seanet=seanet_kw,
        quantizer=dict(
            dimension=config.codebook_dim,
            n_q=config.total_codebooks,
            bins=config.codebook_size,
            input_dimension=seanet.dimension,
            output_dimension=seanet.dimension,
        ),
        transformer=dict(
            d_model=tr.dim,
            num_heads=tr.num_heads,
            num_layers=tr.num_layers,
            causal=True,
            layer_scale=tr.layer_scale,
            context=tr.context,
            conv_layout=True,
            max_period=tr.max_period,
            gating="none",
            norm="layer_norm",
            positional_embedding="rope",
            dim_feedforward=tr.ffn_dim,
            input_dimension=seanet.dimension,
            output_dimensions=[seanet.dimension],
        ),
    )


def kyutai_lm_kwargs(config: LMConfig) -> dict:
    """Our LM config as Kyutai's keyword config: the released one for the 7B, else translated.

    Checked by translating back with `lm_config_from_kyutai`, the path a released config.json
    takes, so both sides are built from the same configuration.
    """
    if config == moshi_7b():
        kwargs = dict(_lm_kwargs)
    else:
        t, d = config.temporal, config.depth
        kwargs = dict(
            dim=t.dim,
            text_card=config.text_card,
            existing_text_padding_id=config.text_padding_id,
            n_q=config.n_q,
            dep_q=config.dep_q,
            card=config.card,
            num_heads=t.num_heads,
            num_layers=t.num_layers,
            hidden_scale=t.ffn_dim / t.dim,
            causal=True,
            layer_scale=t.layer_scale,
            context=t.context,
            max_period=t.max_period,
            gating=t.gating,
            norm=t.norm,
            positional_embedding=t.positions,
            depformer_dim=d.dim,
            depformer_dim_feedforward=d.ffn_dim,
            depformer_num_heads=d.num_heads,
            depformer_num_layers=d.num_layers,
            depformer_layer_scale=d.layer_scale,
            depformer_multi_linear=config.depth_multi_linear,
            depformer_context=config.dep_q,
            depformer_max_period=d.max_period,
            depformer_gating=d.gating,
            depformer_pos_emb=d.positions,
            depformer_weights_per_step=bool(d.weights_per_step),
            delays=list(config.delays),
        )
        if d.weights_schedule is not None:
            kwargs["depformer_weights_per_step_schedule"] = list(d.weights_schedule)
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
