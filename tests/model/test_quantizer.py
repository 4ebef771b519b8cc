import pytest
import torch

from model.config import MimiConfig, mimi, tiny_mimi
from model.kyutai_names import codec_key_from_kyutai
from model.quantizer import Codebook, SplitResidualVQ


def randomize_codebooks(module: torch.nn.Module, seed: int) -> None:
    """Random EMA sums and usages (some below the 1e-5 floor) in every codebook buffer."""
    generator = torch.Generator().manual_seed(seed)
    for name, buffer in module.named_buffers():
        if name.endswith("embedding_sum"):
            buffer.copy_(torch.randn(buffer.shape, generator=generator))
        elif name.endswith("cluster_usage"):
            usage = torch.rand(buffer.shape, generator=generator) * 2
            usage[:3] = 0.0  # never-used centroids: the clamp keeps them finite
            buffer.copy_(usage)


def fit_to_residuals(quantizer: SplitResidualVQ, latent: torch.Tensor, seed: int) -> None:
    """Centroids drawn from the residuals each codebook sees on `latent` [B, D, T], jittered.

    N(0, 1) centroids sit far from the projected latents, so a few codes win every vector and a
    quantizer that picked the wrong code could still agree. Fitted ones put many centroids close
    to every vector (near ties included), as a trained codec does."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for rvq in (quantizer.rvq_first, quantizer.rvq_rest):
            residual = rvq.input_proj(latent).transpose(1, 2).flatten(0, 1)  # [B*T, C]
            for k in range(len(rvq.codebooks)):
                codebook = rvq.codebook(k)
                size = codebook.embedding.shape[0]
                pick = torch.randint(0, residual.shape[0], (size,), generator=g)
                jitter = torch.randn(codebook.embedding.shape, generator=g)
                centroids = residual[pick] + 0.1 * residual.std(dim=0) * jitter
                # The clamped usage, so never-used centroids (usage 0) are fitted too.
                usage = codebook.cluster_usage.clamp(min=1e-5)[:, None]
                codebook.embedding_sum.copy_(centroids * usage)
                codebook.refresh()
                residual = residual - codebook.decode(codebook.encode(residual))


def make(cfg: MimiConfig) -> SplitResidualVQ:
    torch.manual_seed(0)
    quantizer = SplitResidualVQ(cfg)
    randomize_codebooks(quantizer, seed=1)
    quantizer.load_state_dict(quantizer.state_dict())  # refreshes the cached centroids
    return quantizer


def test_codebook_encodes_to_nearest_centroid() -> None:
    codebook = Codebook(dim=8, size=16)
    centroids = torch.randn(16, 8)
    codebook.load_state_dict(
        {
            "_initialized": torch.ones(1),
            "cluster_usage": torch.full((16,), 4.0),
            "embedding_sum": 4.0 * centroids,
        }
    )
    torch.testing.assert_close(codebook.embedding, centroids)
    codes = torch.randint(0, 16, (50,))
    assert torch.equal(codebook.encode(centroids[codes] + 1e-3 * torch.randn(50, 8)), codes)
    assert torch.equal(codebook.decode(codes), centroids[codes])


def test_cached_centroids_follow_dtype_changes() -> None:
    codebook = Codebook(dim=4, size=8)
    randomize_codebooks(codebook, seed=0)
    codebook.load_state_dict(codebook.state_dict())
    codebook.to(torch.float64)
    assert codebook.embedding.dtype == torch.float64
    expected = codebook.embedding_sum / codebook.cluster_usage.clamp(min=1e-5)[:, None]
    torch.testing.assert_close(codebook.embedding, expected, rtol=0, atol=0)


def test_encode_decode_shapes_and_round_trip() -> None:
    cfg = tiny_mimi()
    quantizer = make(cfg)
    x = torch.randn(2, cfg.seanet.dimension, 5)
    for k in (1, 3, cfg.total_codebooks):
        codes = quantizer.encode(x, k)
        assert codes.shape == (2, k, 5) and codes.dtype == torch.long
        assert int(codes.min()) >= 0 and int(codes.max()) < cfg.codebook_size
        assert quantizer.decode(codes).shape == x.shape
    # More codebooks refine, never change, the earlier ones.
    assert torch.equal(quantizer.encode(x, 8)[:, :3], quantizer.encode(x, 3))


def test_decoding_is_the_sum_of_the_code_vectors() -> None:
    cfg = tiny_mimi()
    quantizer = make(cfg)
    x = torch.randn(2, cfg.seanet.dimension, 5)
    codes = quantizer.encode(x, 5)
    vectors = quantizer.code_vectors(5)  # [K, size, D]
    assert vectors.shape == (5, cfg.codebook_size, cfg.seanet.dimension)
    summed = torch.stack([vectors[k][codes[:, k]] for k in range(5)]).sum(0)  # [B, T, D]
    torch.testing.assert_close(summed.transpose(1, 2), quantizer.decode(codes))
    with pytest.raises(ValueError, match="between"):
        quantizer.code_vectors(cfg.total_codebooks + 1)


def test_wrong_input_raises() -> None:
    quantizer = make(tiny_mimi())
    with pytest.raises(ValueError, match="between 1 and 8"):
        quantizer.encode(torch.randn(1, 32, 2), 9)
    with pytest.raises(ValueError, match="between 1 and 8"):
        quantizer.decode(torch.zeros(1, 0, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[B, 32, T\]"):
        quantizer.encode(torch.randn(1, 16, 2), 2)


@pytest.mark.parity
@pytest.mark.parametrize("cfg", [tiny_mimi(), mimi()], ids=["tiny", "released"])
def test_matches_reference(cfg: MimiConfig) -> None:
    from moshi.quantization import SplitResidualVectorQuantizer

    ref = SplitResidualVectorQuantizer(
        dimension=cfg.codebook_dim,
        n_q=cfg.total_codebooks,
        bins=cfg.codebook_size,
        input_dimension=cfg.seanet.dimension,
        output_dimension=cfg.seanet.dimension,
    ).eval()
    randomize_codebooks(ref, seed=2)  # usages other than 1: the centroid is sum / usage
    ours = SplitResidualVQ(cfg)
    names = {
        k: codec_key_from_kyutai(f"quantizer.{k}").removeprefix("quantizer.")
        for k in ref.state_dict()
    }
    ours.load_state_dict({names[k]: v for k, v in ref.state_dict().items()}, strict=True)
    g = torch.Generator().manual_seed(3)
    fit_to_residuals(ours, torch.randn(4, cfg.seanet.dimension, 1000, generator=g), seed=4)
    fitted = ours.state_dict()
    ref.load_state_dict({k: fitted[names[k]] for k in names}, strict=True)

    x = torch.randn(2, cfg.seanet.dimension, 20, generator=g)
    for k in (cfg.semantic_codebooks, cfg.num_codebooks, cfg.total_codebooks):
        ref.set_num_codebooks(k)
        with torch.no_grad():
            ref_codes = ref.encode(x)
            codes = ours.encode(x, k)
            assert torch.equal(codes, ref_codes)
            torch.testing.assert_close(ours.decode(codes), ref.decode(codes), rtol=0, atol=1e-5)
    # The codes vary in every codebook (17..40 distinct of 40 vectors on tiny, 9..40 on the
    # released shape, whose 32nd codebook sees a small residual).
    distinct = [int(codes[:, k].unique().numel()) for k in range(codes.shape[1])]
    assert min(distinct) >= 8, distinct
