"""State-dict key names: Kyutai's Mimi (reference `moshi` package) <-> ours.

Kyutai wraps every convolution in two or three modules (`StreamingConv1d` > `NormConv1d` >
`nn.Conv1d`, and the resamplers add one more) and nests transformers and codebooks a level
deeper. Ours are flat. The renames, Kyutai -> ours:

    encoder.model.3.conv.conv.weight                     -> encoder.model.3.conv.weight
    decoder.model.2.convtr.convtr.weight                 -> decoder.model.2.convtr.weight
    downsample.conv.conv.conv.weight                     -> downsample.conv.weight
    upsample.convtr.convtr.convtr.weight                 -> upsample.convtr.weight
    encoder_transformer.transformer.layers.0...          -> encoder_transformer.layers.0...
    quantizer.rvq_first.vq.layers.0._codebook.X          -> quantizer.rvq_first.codebooks.0.X

Keys no rule touches are the same on both sides.
"""

from __future__ import annotations

import re

# A run of two or more `conv` (or `convtr`) path components, as whole components.
_NESTED_CONV = re.compile(r"(?<![^.])(conv|convtr)(?:\.\1)+(?=\.)")
# Our flat conv: the leaf parameter right under a `conv` / `convtr` component.
_FLAT_CONV = re.compile(r"(?<![^.])(conv|convtr)(?=\.(?:weight|bias)$)")
_KYUTAI_TRANSFORMER = re.compile(r"^(encoder|decoder)_transformer\.transformer\.")
_OUR_TRANSFORMER = re.compile(r"^(encoder|decoder)_transformer\.")
_KYUTAI_CODEBOOK = re.compile(r"^(quantizer\.rvq_(?:first|rest))\.vq\.layers\.(\d+)\._codebook\.")
_OUR_CODEBOOK = re.compile(r"^(quantizer\.rvq_(?:first|rest))\.codebooks\.(\d+)\.")
# Kyutai's resamplers nest their conv three deep, the SEANet convs two deep.
_RESAMPLERS = ("downsample.", "upsample.")


def codec_key_from_kyutai(key: str) -> str:
    """A Kyutai Mimi state-dict key -> our codec's key."""
    key = _NESTED_CONV.sub(r"\1", key)
    key = _KYUTAI_TRANSFORMER.sub(r"\1_transformer.", key)
    return _KYUTAI_CODEBOOK.sub(r"\1.codebooks.\2.", key)


def codec_key_to_kyutai(key: str) -> str:
    """Our codec's key -> the Kyutai Mimi state-dict key."""
    if _OUR_CODEBOOK.match(key):
        return _OUR_CODEBOOK.sub(r"\1.vq.layers.\2._codebook.", key)
    if _OUR_TRANSFORMER.match(key):
        return _OUR_TRANSFORMER.sub(r"\1_transformer.transformer.", key)
    depth = 3 if key.startswith(_RESAMPLERS) else 2
    return _FLAT_CONV.sub(lambda m: ".".join([m.group(1)] * depth), key)
