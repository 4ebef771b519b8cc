"""The codec: streaming equals whole-signal, causality, per-slot reset, and parity with the
reference `moshi` Mimi on random weights (codebooks fitted to the latents, so codes vary)."""

from __future__ import annotations

import pytest
import torch

from model.codec import NO_FRAME, Codec
from model.config import MimiConfig, mimi, tiny_mimi
from model.errors import AudioInputError
from model.kyutai_config import kyutai_mimi_config
from model.kyutai_names import codec_key_from_kyutai
from tests.reference import require_reference


def reference_and_ours(config: MimiConfig, seed: int = 0):
    """The reference Mimi and ours with the same random weights, and codebooks fitted to this
    encoder's latents (`fit_codebooks`) so the parity tests see varied codes."""
    require_reference()
    from moshi.models.loaders import get_mimi

    torch.manual_seed(seed)
    reference = get_mimi(None, kyutai_mimi_config(config), num_codebooks=config.num_codebooks)
    state = reference.state_dict()
    for name, tensor in state.items():  # the loader leaves the codebooks empty
        if name.endswith("cluster_usage"):
            tensor.uniform_(0.5, 2.0)  # usages other than 1: the centroid is sum / usage
    ours = Codec(config).eval()
    ours.load_state_dict({codec_key_from_kyutai(k): v for k, v in state.items()}, strict=True)
    fit_codebooks(ours, seed=seed)
    fitted = ours.state_dict()
    reference.load_state_dict({k: fitted[codec_key_from_kyutai(k)] for k in state}, strict=True)
    return reference, ours


def fit_codebooks(codec: Codec, seed: int = 0) -> None:
    """Give every codebook centroids drawn from the residuals it sees on speech-like audio.

    N(0, 1) centroids sit far from the projected latents, so one or two codes win every frame and
    a quantizer that picked the wrong code would still agree with the reference. Here each
    codebook, in order, takes as centroids residual vectors (after the earlier codebooks) of
    signals like the tests' (other noise seeds, so test vectors are never exact centroids), with
    a little jitter so that copies of a vector differ. Usages are kept; sums follow them.
    """
    g = torch.Generator().manual_seed(seed + 1000)
    pcm = speechlike(4, 12, codec.frame_size, seed=seed + 1000)
    with torch.no_grad():
        latent = codec.latent(pcm)  # [B, D, T]
        for rvq in (codec.quantizer.rvq_first, codec.quantizer.rvq_rest):
            residual = rvq.input_proj(latent).transpose(1, 2).flatten(0, 1)  # [B*T, C]
            for k in range(len(rvq.codebooks)):
                codebook = rvq.codebook(k)
                pick = torch.randint(
                    0, residual.shape[0], (codebook.embedding.shape[0],), generator=g
                )
                jitter = torch.randn(codebook.embedding.shape, generator=g)
                centroids = residual[pick] + 0.1 * residual.std(dim=0) * jitter
                codebook.embedding_sum.copy_(centroids * codebook.cluster_usage[:, None])
                codebook.refresh()
                residual = residual - codebook.decode(codebook.encode(residual))


def distinct_codes(codes: torch.Tensor) -> list[int]:
    """codes [B, K, T] -> the number of distinct codes of each codebook."""
    return [int(codes[:, k].unique().numel()) for k in range(codes.shape[1])]


def speechlike(batch: int, frames: int, frame_size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(frames * frame_size) / 24_000
    tone = torch.sin(2 * torch.pi * 180 * t) * torch.sin(2 * torch.pi * 3 * t)
    return (0.3 * tone + 0.05 * torch.randn(batch, 1, t.numel(), generator=g)).float()


def assert_compiles_as_eager(codec: Codec) -> None:
    """encode_step and decode_step compiled as one graph each (aot_eager: the graph without
    generating C++) give exactly what eager gives, frame by frame."""
    torch._dynamo.reset()
    encode = torch.compile(codec.encode_step, fullgraph=True, dynamic=False, backend="aot_eager")
    decode = torch.compile(codec.decode_step, fullgraph=True, dynamic=False, backend="aot_eager")
    pcm = speechlike(2, 4, codec.frame_size, seed=5)
    states = [(codec.init_encoder_state(2), codec.init_decoder_state(2)) for _ in range(2)]
    with torch.no_grad():
        for frame in pcm.split(codec.frame_size, dim=2):
            want = codec.encode_step(frame, states[0][0])
            got = encode(frame, states[1][0])
            assert torch.equal(got, want)
            torch.testing.assert_close(
                decode(got, states[1][1]), codec.decode_step(want, states[0][1]), rtol=0, atol=0
            )


@pytest.fixture(scope="module")
def tiny_pair():
    return reference_and_ours(tiny_mimi())


@pytest.mark.parity
def test_whole_signal_matches_reference(tiny_pair) -> None:
    reference, ours = tiny_pair
    pcm = speechlike(2, 12, ours.frame_size)  # 12 frames: past the tiny transformer's context
    with torch.no_grad():
        codes = ours.encode(pcm)
        expected = reference.encode(pcm)
        assert torch.equal(codes, expected)
        assert min(distinct_codes(codes)) >= 12  # of 24 vectors (18-21 measured)
        torch.testing.assert_close(ours.decode(codes), reference.decode(codes), atol=1e-5, rtol=0)


@pytest.mark.parity
def test_streamed_matches_reference(tiny_pair) -> None:
    reference, ours = tiny_pair
    # The reference's ring cache keeps `context` entries and so forgets one key per two-step
    # frame once past the context; ours keeps the whole context. Compare within the context.
    frames = ours.config.transformer.context // 2
    pcm = speechlike(2, frames, ours.frame_size, seed=1)
    enc, dec = ours.init_encoder_state(2), ours.init_decoder_state(2)
    streamed = []
    with torch.no_grad(), reference.streaming(2):
        for t in range(frames):
            frame = pcm[:, :, t * ours.frame_size : (t + 1) * ours.frame_size]
            codes = ours.encode_step(frame, enc)
            assert torch.equal(codes, reference.encode(frame))
            torch.testing.assert_close(
                ours.decode_step(codes, dec), reference.decode(codes), atol=1e-5, rtol=0
            )
            streamed.append(codes)
    assert min(distinct_codes(torch.cat(streamed, dim=2))) >= 6  # of 10 vectors (9-10 measured)


@pytest.mark.parity
def test_released_config_matches_reference() -> None:
    """The released Mimi shape (random weights): identical codes, audio within 1e-5."""
    reference, ours = reference_and_ours(mimi())
    pcm = speechlike(2, 12, ours.frame_size, seed=2)
    with torch.no_grad():
        codes = ours.encode(pcm)
        assert torch.equal(codes, reference.encode(pcm))
        assert min(distinct_codes(codes)) >= 16  # of 24 vectors (22-24 measured)
        torch.testing.assert_close(ours.decode(codes), reference.decode(codes), atol=1e-5, rtol=0)


def _stream(codec: Codec, pcm: torch.Tensor):
    B, frames = pcm.shape[0], pcm.shape[2] // codec.frame_size
    enc, dec = codec.init_encoder_state(B), codec.init_decoder_state(B)
    codes, audio = [], []
    for t in range(frames):
        c = codec.encode_step(pcm[:, :, t * codec.frame_size : (t + 1) * codec.frame_size], enc)
        codes.append(c)
        audio.append(codec.decode_step(c, dec))
    return torch.cat(codes, dim=2), torch.cat(audio, dim=2)


def test_streaming_equals_whole_signal_beyond_the_context(tiny_pair) -> None:
    _, codec = tiny_pair
    pcm = speechlike(2, 3 * codec.config.transformer.context, codec.frame_size, seed=3)
    with torch.no_grad():
        codes, audio = _stream(codec, pcm)
        assert torch.equal(codes, codec.encode(pcm))
        torch.testing.assert_close(audio, codec.decode(codes), atol=1e-5, rtol=0)


def _latent(codec: Codec, pcm: torch.Tensor) -> torch.Tensor:
    x = codec.encoder(pcm)
    x = codec.encoder_transformer(x.transpose(1, 2)).transpose(1, 2)
    return codec.downsample(x)  # [B, D, frames], what the quantizer sees


def test_encoding_and_decoding_are_causal(tiny_pair) -> None:
    _, codec = tiny_pair
    F = codec.frame_size
    pcm = speechlike(1, 8, F, seed=4)
    changed = pcm.clone()
    changed[:, :, 5 * F :] = torch.randn_like(changed[:, :, 5 * F :])
    codes = torch.randint(0, codec.config.codebook_size, (1, codec.num_codebooks, 8))
    other = codes.clone()
    other[:, :, 5:] = (other[:, :, 5:] + 1) % codec.config.codebook_size
    with torch.no_grad():
        a, b = _latent(codec, pcm), _latent(codec, changed)
        assert torch.equal(a[:, :, :5], b[:, :, :5])
        assert not torch.allclose(a[:, :, 5:], b[:, :, 5:])
        da, db = codec.decode(codes), codec.decode(other)
        assert torch.equal(da[:, :, : 5 * F], db[:, :, : 5 * F])
        assert not torch.allclose(da[:, :, 5 * F :], db[:, :, 5 * F :])


def test_reset_one_slot_leaves_the_others_bit_identical(tiny_pair) -> None:
    _, codec = tiny_pair
    pcm = speechlike(3, 8, codec.frame_size, seed=5)
    F = codec.frame_size
    enc, dec = codec.init_encoder_state(3), codec.init_decoder_state(3)
    ref_enc, ref_dec = codec.init_encoder_state(3), codec.init_decoder_state(3)
    mask = torch.tensor([False, True, False])
    with torch.no_grad():
        for t in range(8):
            if t == 4:
                enc.reset(mask)
                dec.reset(mask)
            frame = pcm[:, :, t * F : (t + 1) * F]
            out = codec.decode_step(codec.encode_step(frame, enc), dec)
            expected = codec.decode_step(codec.encode_step(frame, ref_enc), ref_dec)
            assert torch.equal(out[[0, 2]], expected[[0, 2]])
        # The reset slot behaves like a fresh conversation that started at frame 4 (up to
        # rounding: a batch of one runs other matmul kernels than a batch of three).
        _, fresh_audio = _stream(codec, pcm[1:2, :, 4 * F :])
        torch.testing.assert_close(out[1:2], fresh_audio[:, :, -F:], atol=1e-6, rtol=0)


def test_inactive_slot_is_skipped_without_disturbing_the_others(tiny_pair) -> None:
    _, codec = tiny_pair
    F = codec.frame_size
    pcm = speechlike(2, 6, F, seed=6)
    enc = codec.init_encoder_state(2)
    skipped = torch.tensor([True, False])
    codes = []
    with torch.no_grad():
        for t in range(6):
            frame = pcm[:, :, t * F : (t + 1) * F]
            active = skipped if t == 2 else None  # slot 1's frame 2 "did not arrive"
            c = codec.encode_step(frame, enc, active)
            codes.append(c)
        assert (codes[2][1] == NO_FRAME).all()
        alone = torch.cat([codes[t] for t in range(6)], dim=2)
        assert torch.equal(alone[0:1], codec.encode(pcm[0:1]))
        # Slot 1 saw frames 0, 1, 3, 4, 5 as one continuous stream.
        kept = torch.cat([pcm[1:2, :, t * F : (t + 1) * F] for t in (0, 1, 3, 4, 5)], dim=2)
        assert torch.equal(
            torch.cat([codes[t][1:2] for t in (0, 1, 3, 4, 5)], dim=2), codec.encode(kept)
        )


def test_decode_step_plays_silence_for_frames_not_ready(tiny_pair) -> None:
    _, codec = tiny_pair
    dec = codec.init_decoder_state(2)
    codes = torch.zeros(2, codec.num_codebooks, 1, dtype=torch.long)
    codes[1] = NO_FRAME
    with torch.no_grad():
        pcm = codec.decode_step(codes, dec)
    assert (pcm[1] == 0).all() and pcm[0].abs().sum() > 0


def test_selectable_number_of_codebooks(tiny_pair) -> None:
    _, codec = tiny_pair
    pcm = speechlike(1, 2, codec.frame_size)
    try:
        codec.num_codebooks = 2
        assert codec.encode(pcm).shape == (1, 2, 2)
        with pytest.raises(ValueError, match="num_codebooks"):
            codec.num_codebooks = codec.config.total_codebooks + 1
    finally:
        codec.num_codebooks = codec.config.num_codebooks


@pytest.mark.parametrize(
    ("pcm", "error", "match"),
    [
        (torch.zeros(1, 1, 1000), ValueError, "exactly one frame of 1920"),
        (torch.zeros(1, 2, 1920), ValueError, "mono"),
    ],
)
def test_bad_frames_are_refused_clearly(tiny_pair, pcm, error, match) -> None:
    _, codec = tiny_pair
    with pytest.raises(error, match=match):
        codec.encode_step(pcm, codec.init_encoder_state(1))


def test_non_finite_signals_are_refused(tiny_pair) -> None:
    """Whole signals are checked here; frames at the engine's boundary (tests/app/core), since
    a check inside `encode_step` would wait for the device every frame."""
    _, codec = tiny_pair
    with pytest.raises(AudioInputError, match="NaN"):
        codec.encode(torch.full((1, 1, 1920), float("nan")))
