"""antiphon model core: pure torch codec, LM, sampling, checkpoints, tokenizer.

files = resolve_files(hf_repo="kyutai/moshiko-pytorch-bf16")
codec = load_codec(files.codec_weights, files.codec_config, device="cuda")
lm = load_lm(files.lm_weights, files.lm_config, device="cuda")
enc, dec = codec.init_encoder_state(1), codec.init_decoder_state(1)
state = lm.init_state(1, files.sampling)
out = lm.step(codec.encode_step(pcm_frame, enc), state)   # pcm_frame [1, 1, 1920]
reply = codec.decode_step(out.audio, dec)                  # [1, 1, 1920]
"""

from .checkpoint import ModelFiles, load_codec, load_lm, load_weights, resolve_files
from .codec import Codec, DecoderState, EncoderState
from .config import LMConfig, MimiConfig, mimi, moshi_7b, tiny_lm, tiny_mimi
from .errors import AntiphonError, AudioInputError, CheckpointError, ConfigError
from .lm import LM, LMFrame, LMState
from .sampling import SamplingParams
from .tokenizer import TextStream, TextTokenizer

__all__ = [
    "LM",
    "AntiphonError",
    "AudioInputError",
    "CheckpointError",
    "Codec",
    "ConfigError",
    "DecoderState",
    "EncoderState",
    "LMConfig",
    "LMFrame",
    "LMState",
    "MimiConfig",
    "ModelFiles",
    "SamplingParams",
    "TextStream",
    "TextTokenizer",
    "load_codec",
    "load_lm",
    "load_weights",
    "mimi",
    "moshi_7b",
    "resolve_files",
    "tiny_lm",
    "tiny_mimi",
]
