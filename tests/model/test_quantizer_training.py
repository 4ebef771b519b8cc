"""The quantizer's training path: EMA codebooks in Kyutai's layout, straight-through gradients,
dead-code replacement, and agreement with the inference path."""

import torch

from model.config import tiny_mimi
from model.quantizer import Codebook, CodebookTraining, SplitResidualVQ


def test_first_batch_initialises_then_ema_moves_centroids_to_assigned_means() -> None:
    torch.manual_seed(0)
    codebook = Codebook(dim=2, size=2)
    x = torch.tensor([[0.0, 0.0], [0.1, 0.0], [10.0, 10.0], [10.1, 10.0]])
    codebook.initialize(x, iterations=5)
    assert codebook._initialized.item() == 1
    centroids = sorted(codebook.embedding.tolist())
    torch.testing.assert_close(torch.tensor(centroids), torch.tensor([[0.05, 0.0], [10.05, 10.0]]))

    before = codebook.embedding.clone()
    target = x + torch.tensor([1.0, 0.0])  # the data moves: centroids follow by EMA
    codes = codebook.encode(target)
    training = CodebookTraining(decay=0.5, replace_every=1000)
    codebook.update(target, codes, training)
    # Kyutai's layout: the centroid is embedding_sum / cluster_usage, both EMAs.
    for c in range(2):
        mean = target[codes == c].mean(dim=0)
        count = float((codes == c).sum())
        usage = 0.5 * 2.0 + 0.5 * count  # k-means gave each centroid two vectors
        expected = (0.5 * 2.0 * before[c] + 0.5 * count * mean) / usage
        torch.testing.assert_close(codebook.embedding[c], expected)
        torch.testing.assert_close(codebook.embedding_sum[c] / codebook.cluster_usage[c], expected)


def test_centroids_no_vector_chose_are_replaced_at_the_first_check() -> None:
    torch.manual_seed(0)
    codebook = Codebook(dim=2, size=8)
    x = torch.randn(4, 2)  # fewer vectors than codes: k-means leaves duplicates unchosen
    codebook.initialize(x, iterations=3)
    assert (codebook.cluster_usage > 0.5).sum() <= 4
    training = CodebookTraining(decay=0.99, replace_every=1)
    codebook.update(x, codebook.encode(x), training)
    assert (codebook.cluster_usage > 0.1).all()  # every code has been given a batch vector


def test_dead_codes_are_replaced_by_batch_vectors() -> None:
    torch.manual_seed(0)
    codebook = Codebook(dim=3, size=8)
    codebook.embedding_sum.copy_(torch.randn(8, 3))
    codebook.cluster_usage.copy_(torch.tensor([5.0, 5, 5, 5, 5, 5, 0.01, 0.02]))
    x = torch.full((4, 3), 7.0)
    assert codebook.replace_dead(x, ratio=0.1) == 2
    codebook.refresh()
    torch.testing.assert_close(codebook.embedding[6:], torch.full((2, 3), 7.0))
    assert (codebook.cluster_usage[6:] > 1).all()


def test_forward_train_matches_inference_and_passes_gradients_straight_through() -> None:
    torch.manual_seed(0)
    cfg = tiny_mimi()
    quantizer = SplitResidualVQ(cfg)
    x = torch.randn(4, cfg.seanet.dimension, 40, requires_grad=True)
    _, codes, commitment, _ = quantizer.forward_train(x, 4, CodebookTraining())
    assert codes.shape == (4, 4, 40) and commitment.item() > 0
    # Without learning, the training path gives the inference path's codes and latent, and
    # the semantic share is what the first codebook alone decodes to.
    quantized, codes, _, semantic = quantizer.forward_train(x, 4, None)
    assert torch.equal(codes, quantizer.encode(x.detach(), 4))
    torch.testing.assert_close(quantized, quantizer.decode(codes))
    torch.testing.assert_close(semantic, quantizer.decode(codes[:, :1]))
    # Straight through: d(sum quantized)/dx is that of the projections alone.
    quantized.sum().backward()
    projections = [quantizer.rvq_first, quantizer.rvq_rest]
    expected = torch.stack(
        [
            (r.input_proj.weight[:, :, 0].T @ r.output_proj.weight[:, :, 0].T).sum(1)
            for r in projections
        ]
    ).sum(0)
    assert x.grad is not None
    torch.testing.assert_close(x.grad, expected[None, :, None].expand_as(x))


def test_training_reduces_quantization_error_and_keeps_the_file_layout() -> None:
    torch.manual_seed(0)
    cfg = tiny_mimi()
    quantizer = SplitResidualVQ(cfg)
    data = torch.randn(4, cfg.seanet.dimension, 16)
    keys = set(quantizer.state_dict())

    def error() -> float:  # the commitment loss: how far each codebook's input is from it
        return float(quantizer.forward_train(data, 4, None).commitment)

    training = CodebookTraining(decay=0.9)
    with torch.no_grad():
        quantizer.forward_train(torch.randn(4, cfg.seanet.dimension, 16), 4, training)  # init
        first = error()
        for _ in range(20):
            quantizer.forward_train(data, 4, training)
        assert error() < 0.8 * first
    assert set(quantizer.state_dict()) == keys  # still Kyutai's names: loads as their files do
