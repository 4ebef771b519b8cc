"""Kyutai's configuration formats <-> our frozen configs, both ways, in one place.

Reading: `lm_config_from_kyutai` turns the LM keyword config of a released `config.json` into an
`LMConfig`, and `sampling_from_kyutai` its `lm_gen_config`; everything from outside is checked
here. Writing: `lm_config_to_kyutai` is the inverse (what the demo model's `config.json` holds,
and what the reference package's `LMModel` is built from in the parity tests and `antiphon
bench`); `kyutai_mimi_config` writes a codec config as the reference loader's `mimi_config`
dict (Kyutai's `config.json` has no codec shape, so that direction has no reader).
"""

from __future__ import annotations

from typing import Any

from .config import LMConfig, MimiConfig, TransformerConfig
from .errors import ConfigError
from .sampling import SamplingParams

# config.json keys that describe files or generation, not the LM's shape.
_FILE_KEYS = {"moshi_name", "mimi_name", "tokenizer_name", "model_type", "lm_gen_config"}
# Keys that do not change the inference graph (the depth context is ignored by Kyutai's code too).
_IGNORED_KEYS = {
    "depformer_context",
    "depformer_causal",
    "model_id",
    "existing_text_end_padding_id",
}
# Keys with no sensible default: without them the shapes are unknown.
_REQUIRED_KEYS = (
    "dim",
    "num_heads",
    "num_layers",
    "context",
    "depformer_num_heads",
    "depformer_num_layers",
)


def lm_config_from_kyutai(raw: dict[str, Any]) -> LMConfig:
    """Translate Kyutai's LM keyword config (config.json minus file keys) into an LMConfig."""
    kw = {k: v for k, v in raw.items() if k not in _FILE_KEYS | _IGNORED_KEYS}
    absent = sorted(key for key in _REQUIRED_KEYS if kw.get(key) is None)
    if absent:
        raise ConfigError(f"config.json: the LM config lacks {absent}; is it Moshi's config.json?")

    def take(key: str, default: Any = None) -> Any:
        return kw.pop(key, default)

    if not take("causal", True):
        raise ConfigError("config.json: only causal LMs can stream (causal must be true)")
    dim, layer_scale = take("dim"), take("layer_scale")
    gating, max_period = take("gating", "none"), take("max_period", 10_000)
    norm, positions = take("norm", "layer_norm"), take("positional_embedding", "sin")
    hidden_scale = take("hidden_scale", 4)
    depth_dim = take("depformer_dim", 256)
    depth_ffn = take("depformer_dim_feedforward") or int(hidden_scale * depth_dim)
    depth_positions = take("depformer_pos_emb", "sin")
    for name, value in (
        ("positional_embedding", positions),
        ("depformer_pos_emb", depth_positions),
    ):
        if value not in ("rope", "none"):
            raise ConfigError(f"config.json: {name}={value!r} is not supported (rope or none)")
    n_q, dep_q = take("n_q", 8), take("dep_q", 8)
    schedule = take("depformer_weights_per_step_schedule")
    weights_per_step = dep_q if take("depformer_weights_per_step", False) else 0
    if not weights_per_step:
        raise ConfigError(
            "config.json: depformer_weights_per_step=false cannot stream "
            "(Kyutai's code cannot either); no released model uses it"
        )
    heard_ids = _heard_ids(take("heard_text_ids"))  # its own message, not "inconsistent"
    try:
        config = LMConfig(
            temporal=TransformerConfig(
                dim=dim,
                num_heads=take("num_heads"),
                num_layers=take("num_layers"),
                ffn_dim=int(hidden_scale * dim),
                norm=norm,
                gating=gating,
                layer_scale=layer_scale,
                positions=positions,
                max_period=max_period,
                context=take("context"),
            ),
            depth=TransformerConfig(
                dim=depth_dim,
                num_heads=take("depformer_num_heads"),
                num_layers=take("depformer_num_layers"),
                ffn_dim=depth_ffn,
                norm=norm,
                gating=take("depformer_gating") or gating,
                layer_scale=take("depformer_layer_scale", layer_scale),
                positions=depth_positions,
                max_period=take("depformer_max_period", max_period),
                weights_per_step=weights_per_step,
                weights_schedule=tuple(schedule) if schedule is not None else None,
            ),
            text_card=take("text_card", 32_000),
            card=take("card", 1024),
            n_q=n_q,
            dep_q=dep_q,
            delays=tuple(take("delays", [0] * (n_q + 1))),
            text_padding_id=take("existing_text_padding_id", 3),
            depth_multi_linear=take("depformer_multi_linear", False),
            heard_ids=heard_ids,
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config.json: inconsistent LM config: {exc}") from exc
    if kw:
        raise ConfigError(
            f"config.json: options this version does not implement: {sorted(kw)}. "
            "Moshi-style models (moshiko, moshika) are supported."
        )
    return config


def sampling_from_kyutai(lm_gen_config: dict[str, Any]) -> SamplingParams:
    """Kyutai's `lm_gen_config` ({"temp", "temp_text", "top_k", "top_k_text"}) as our params."""
    if not isinstance(lm_gen_config, dict):
        raise ConfigError(f"config.json: lm_gen_config must be an object, got {lm_gen_config!r}")
    defaults = SamplingParams()
    try:
        return SamplingParams(
            text_temperature=lm_gen_config.get("temp_text", defaults.text_temperature),
            text_top_k=lm_gen_config.get("top_k_text", defaults.text_top_k),
            audio_temperature=lm_gen_config.get("temp", defaults.audio_temperature),
            audio_top_k=lm_gen_config.get("top_k", defaults.audio_top_k),
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config.json: bad lm_gen_config {lm_gen_config}: {exc}") from exc


def lm_config_to_kyutai(config: LMConfig) -> dict[str, Any]:
    """Kyutai's LM keyword config, which `model.checkpoint.lm_config_from_kyutai` reads back."""
    temporal, depth = config.temporal, config.depth
    if not depth.weights_per_step:
        raise ValueError("Kyutai's format needs weights per step in the depth transformer")
    hidden_scale = temporal.ffn_dim / temporal.dim
    assert int(hidden_scale * temporal.dim) == temporal.ffn_dim
    return {
        "dim": temporal.dim,
        "num_heads": temporal.num_heads,
        "num_layers": temporal.num_layers,
        "hidden_scale": hidden_scale,
        "context": temporal.context,
        "causal": True,
        "norm": temporal.norm,
        "gating": temporal.gating,
        "layer_scale": temporal.layer_scale,
        "positional_embedding": temporal.positions,
        "max_period": temporal.max_period,
        "depformer_dim": depth.dim,
        "depformer_num_heads": depth.num_heads,
        "depformer_num_layers": depth.num_layers,
        "depformer_dim_feedforward": depth.ffn_dim,
        "depformer_gating": depth.gating,
        "depformer_layer_scale": depth.layer_scale,
        "depformer_pos_emb": depth.positions,
        "depformer_max_period": depth.max_period,
        "depformer_weights_per_step": True,
        "depformer_weights_per_step_schedule": (
            list(depth.weights_schedule) if depth.weights_schedule is not None else None
        ),
        "depformer_multi_linear": config.depth_multi_linear,
        "text_card": config.text_card,
        "card": config.card,
        "n_q": config.n_q,
        "dep_q": config.dep_q,
        "delays": list(config.delays),
        "existing_text_padding_id": config.text_padding_id,
    } | ({"heard_text_ids": list(config.heard_ids)} if config.heard_ids is not None else {})


def _heard_ids(value: Any) -> tuple[int, int] | None:
    """`heard_text_ids` (antiphon's own key, absent from Kyutai's configs): [open, close]."""
    if value is None:
        return None
    if not (isinstance(value, list) and len(value) == 2 and all(type(v) is int for v in value)):
        raise ConfigError(
            f"config.json: heard_text_ids must be two token ids [open, close], got {value!r} "
            "(`antiphon train export` writes it from a `train lm --monologue-hears` run: "
            "export the model again)"
        )
    return (value[0], value[1])


def kyutai_mimi_config(config: MimiConfig) -> dict[str, Any]:
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


__all__ = [
    "kyutai_mimi_config",
    "lm_config_from_kyutai",
    "lm_config_to_kyutai",
    "sampling_from_kyutai",
]
