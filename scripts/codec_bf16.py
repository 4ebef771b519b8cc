"""What bf16 or fp16 codec weights (`model.quantize.store_codec_bf16_`, `store_codec_fp16_`)
cost against fp32, on speech.

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python scripts/codec_bf16.py --assets app/assets
    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python scripts/codec_bf16.py   # released Mimi shape
    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python scripts/codec_bf16.py --weights float16

The speech: espeak-ng speaking four sentences in three voices (about 20 s). Both codecs stream
it frame by frame (`encode_step`, then `decode_step` of their own codes), as the runtime does.
Printed:

- codes: per codebook, the fraction of frames whose code is the same in bf16 as in fp32; for
  scale, the same for the fp32 codec on the input plus white noise 60 dB below its RMS;
- audio: the bf16 codec's output against the fp32 codec's, SNR (dB) and STOI, end to end (its own
  codes) and the decoder alone (the fp32 codes); and, for scale, the fp32 codec's own output
  against the input speech.

--assets DIR: a trained codec (an exported bundle, e.g. app/assets). Without it: the released
Mimi's shape with random weights, where only the numbers' error means something (the latent's
relative error, the decoder's SNR on the same codes): codes of random weights sit on near ties.
With --fit-codebooks the random codec's codebooks take residual vectors of the speech itself as
centroids (as tests/model/test_codec.py's `fit_codebooks`), so that its codes vary.
--weights: the format against fp32 (default bfloat16; "bf16" below stands for it).
Also printed: the relative error of the latent the quantizer sees, bf16 against fp32.
--min-conv-weights N: the decoder's convs with at least N weights in bf16 (default: 2^20, none
of the demo codec's; 65536 takes the same layers as 2^20 takes of the released Mimi);
--encoder-convs: the encoder's too.
"""

from __future__ import annotations

import argparse
import copy

import numpy as np
import torch

import model.quantize as quantize
from app.train.espeak import synthesizer
from app.train.stoi import stoi
from app.train.utterance import Voice
from model import Codec, mimi
from model.bundle import bundle_files
from model.checkpoint import load_codec
from model.quantizer import Codebook

SENTENCES = [
    "The quick brown fox jumps over the lazy dog, and then it runs away into the forest.",
    "Could you tell me how many minutes it takes to walk from the station to the museum?",
    "Seven hundred and twenty three people attended the meeting on Thursday afternoon.",
    "She sells sea shells by the sea shore, but nobody seems to buy them anymore.",
]
VOICES = [Voice("en-us"), Voice("en-us", variant="f3", pitch=70), Voice("en-us", variant="m3")]


def speech(sample_rate: int, sentences: int = len(SENTENCES)) -> torch.Tensor:
    """The test speech [1, 1, samples] at 24 kHz, each utterance followed by 0.3 s of silence."""
    assert sample_rate == 24_000, "espeak's speech is resampled to 24 kHz"
    engine = synthesizer()
    pieces = []
    for i, sentence in enumerate(SENTENCES[:sentences]):
        pcm = engine.synthesize(sentence, VOICES[i % len(VOICES)]).pcm
        pieces += [pcm, np.zeros(sample_rate * 3 // 10, dtype=np.float32)]
    return torch.from_numpy(np.concatenate(pieces)).view(1, 1, -1)


@torch.no_grad()
def fit_codebooks(codec: Codec, pcm: torch.Tensor, generator: torch.Generator) -> None:
    """Centroids drawn from the residuals each codebook sees on `pcm`, in order, jittered."""
    latent = codec.latent(pcm)  # [1, D, T]
    for rvq in (codec.quantizer.rvq_first, codec.quantizer.rvq_rest):
        residual = rvq.input_proj(latent).transpose(1, 2).flatten(0, 1)  # [T, C]
        for k in range(len(rvq.codebooks)):
            codebook = rvq.codebook(k)
            size = codebook.embedding.shape[0]
            pick = torch.randint(0, residual.shape[0], (size,), generator=generator)
            jitter = torch.randn(codebook.embedding.shape, generator=generator)
            centroids = residual[pick] + 0.1 * residual.std(dim=0) * jitter
            codebook.embedding_sum.copy_(centroids * codebook.cluster_usage[:, None])
            codebook.refresh()
            residual = residual - codebook.decode(codebook.encode(residual))


def stream(codec: Codec, pcm: torch.Tensor, codes: torch.Tensor | None = None):
    """Encode `pcm` frame by frame, decode `codes` (default: its own) frame by frame."""
    enc, dec = codec.init_encoder_state(1), codec.init_decoder_state(1)
    frames = pcm.split(codec.frame_size, dim=2)
    own = torch.cat([codec.encode_step(f, enc) for f in frames], dim=2)  # [1, K, T]
    played = own if codes is None else codes
    out = [codec.decode_step(played[..., t : t + 1], dec) for t in range(played.shape[2])]
    return own, torch.cat(out, dim=2)[0, 0].numpy()


def snr(reference: np.ndarray, other: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(reference**2) / np.sum((reference - other) ** 2)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--assets", help="an exported bundle: its trained codec")
    parser.add_argument("--min-conv-weights", type=int, help="convs this large or larger in bf16")
    parser.add_argument(
        "--encoder-convs", action="store_true", help="the encoder's large convs in bf16 too"
    )
    parser.add_argument("--weights", choices=("bfloat16", "float16"), default="bfloat16")
    parser.add_argument(
        "--fit-codebooks", action="store_true", help="random codec: centroids from the speech"
    )
    parser.add_argument("--sentences", type=int, default=len(SENTENCES), help="speak only these")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.min_conv_weights is not None:
        quantize.BF16_MIN_CONV_WEIGHTS = args.min_conv_weights

    torch.manual_seed(args.seed)
    if args.assets:
        files = bundle_files(args.assets)
        full = load_codec(files.codec_weights, files.codec_config, "cpu")
    else:
        full = Codec(mimi()).eval()
        for module in full.modules():
            if isinstance(module, Codebook):  # untrained codebooks are zeros: give them spread
                module.embedding_sum.normal_()
                module.refresh()
    pcm = speech(full.sample_rate, args.sentences)
    pcm = torch.nn.functional.pad(pcm, (0, -pcm.shape[2] % full.frame_size))
    if args.fit_codebooks and not args.assets:
        fit_codebooks(full, pcm, torch.Generator().manual_seed(args.seed))
    half = copy.deepcopy(full)
    if args.weights == "float16":
        converted = quantize.store_codec_fp16_(half)
    else:
        converted = quantize.store_codec_bf16_(half, args.encoder_convs)

    # For scale: how many codes flip in fp32 when the input changes by a noise 60 dB below it.
    g = torch.Generator().manual_seed(args.seed + 1)
    noisy = pcm + pcm.std() * 1e-3 * torch.randn(pcm.shape, generator=g)
    with torch.no_grad():
        codes, audio = stream(full, pcm)
        half_codes, half_audio = stream(half, pcm)
        _, half_decoded = stream(half, pcm, codes)
        noisy_codes, _ = stream(full, noisy)
        latent, half_latent = full.latent(pcm), half.latent(pcm)
    clean = pcm[0, 0].numpy()
    rate = full.sample_rate
    frames = codes.shape[2]
    print(f"{frames} frames ({frames * full.frame_size / rate:.1f} s), {converted} weights in bf16")
    print(f"(bf16: {args.weights})")
    latent_error = (half_latent - latent).norm() / latent.norm()
    print(f"latent relative error (bf16 vs fp32, whole signal): {latent_error:.2e}")
    same = (codes == half_codes)[0].float().mean(dim=1)  # [K]
    distinct = [int(codes[0, k].unique().numel()) for k in range(codes.shape[1])]
    print("codebook              " + "".join(f"{k:>7}" for k in range(codes.shape[1])))
    print("codes agree (%)       " + "".join(f"{100 * s:7.1f}" for s in same.tolist()))
    noise_same = (codes == noisy_codes)[0].float().mean(dim=1)
    print("fp32, input + noise   " + "".join(f"{100 * s:7.1f}" for s in noise_same.tolist()))
    print("distinct codes (fp32) " + "".join(f"{d:7d}" for d in distinct))
    print(
        f"all codes of a frame agree: {100 * (codes == half_codes)[0].all(0).float().mean():.1f}%"
    )
    print("| bf16 output against | SNR dB | STOI |\n|---|---|---|")
    for name, other in (("end to end", half_audio), ("decoder alone", half_decoded)):
        print(f"| fp32 output, {name} | {snr(audio, other):.1f} | {stoi(audio, other, rate):.4f} |")
    for name, out in (("fp32", audio), ("bf16", half_audio)):
        print(
            f"({name} output against the input speech: SNR {snr(clean, out):.1f} dB, "
            f"STOI {stoi(clean, out, rate):.4f})"
        )


if __name__ == "__main__":
    main()
