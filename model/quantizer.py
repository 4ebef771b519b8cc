"""Mimi's split residual vector quantizer: inference, and the training path.

The latent [B, D, T] is quantized by two residual VQs that both see the full latent: `rvq_first`
(the semantic codebook(s), distilled from WavLM in Kyutai's training) and `rvq_rest` (the
acoustic ones). Their decoded outputs are summed. Each RVQ projects D -> codebook_dim, quantizes
the residual codebook by codebook, and projects back.

Codebooks are stored the way Kyutai trains them (EMA sums), so released files load unchanged:
the centroid is `embedding_sum / cluster_usage`. Training (`forward_train`) keeps that layout:
codebooks are not parameters but exponential moving averages of the vectors assigned to them
(`embedding_sum`) and of their counts (`cluster_usage`); the encoder gets a commitment loss and
the gradient passes the quantizer straight through; codes that fall out of use are replaced by
vectors of the current batch. A trained codec therefore saves and loads like Kyutai's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import nn

from model.config import MimiConfig

_EPSILON = 1e-5  # floor on cluster usage, as in training


@dataclass(frozen=True)
class CodebookTraining:
    """How codebooks learn (Kyutai's defaults where they have one)."""

    decay: float = 0.99  # EMA decay of embedding_sum and cluster_usage
    # A code whose usage falls below this fraction of the mean usage is replaced by a vector of
    # the batch, with the mean usage (as Kyutai's threshold_usage_ratio / replaced_usage_ratio).
    dead_usage_ratio: float = 0.1
    replace_every: int = 5  # check for dead codes every this many updates
    kmeans_iterations: int = 10  # initialisation on the first batch


class Codebook(nn.Module):
    """One codebook of `size` centroids of `dim` dims; encode = index of the nearest centroid."""

    def __init__(self, dim: int, size: int) -> None:
        super().__init__()
        self._initialized: torch.Tensor
        self.cluster_usage: torch.Tensor
        self.embedding_sum: torch.Tensor
        self.embedding: torch.Tensor
        # Names and shapes as in Kyutai's checkpoints. `_initialized` is a training flag kept only
        # so strict loading works.
        self.register_buffer("_initialized", torch.zeros(1))
        self.register_buffer("cluster_usage", torch.ones(size))
        self.register_buffer("embedding_sum", torch.zeros(size, dim))
        # Derived centroids [size, dim], cached; not saved.
        self.register_buffer("embedding", torch.zeros(size, dim), persistent=False)
        # [1, size, dim + 2]: the centroids with a column of ones and their squared norms, the
        # right-hand side of `torch.cdist`'s matmul, cached (recomputing it was 16 passes over
        # every codebook per Mimi frame).
        self._augmented: torch.Tensor
        self.register_buffer("_augmented", torch.zeros(1, size, dim + 2), persistent=False)
        self.refresh()

    def refresh(self) -> None:
        """Recompute the cached centroids (done after loading and after `.to()`)."""
        usage = self.cluster_usage.clamp(min=_EPSILON)[:, None]
        self.embedding = self.embedding_sum / usage
        norms = self.embedding.pow(2).sum(-1, keepdim=True)
        self._augmented = torch.cat([self.embedding, torch.ones_like(norms), norms], -1)[None]

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args)
        self.refresh()

    def _apply(self, fn: Any, recurse: bool = True) -> Codebook:
        super()._apply(fn, recurse)
        self.refresh()
        return self

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Vectors [N, dim] -> codes [N] (long)."""
        # The distances of torch.cdist, as the reference uses, op for op (ATen's
        # `_euclidean_dist`, its path for more than 25 centroids), with the centroid side cached:
        # an ||e||^2 - 2 x.e argmin of our own would round differently and flip codes when two
        # centroids are nearly equidistant.
        if self.embedding.shape[0] <= 25 or self._augmented.dtype != x.dtype:
            return torch.cdist(x[None], self.embedding[None], p=2)[0].argmin(dim=-1)
        norms = x.pow(2).sum(-1, keepdim=True)
        left = torch.cat([x.mul(-2), norms, torch.ones_like(norms)], -1)[None]  # [1, N, dim + 2]
        distances = (left @ self._augmented.mT).clamp_min_(0).sqrt_()[0]  # [N, size]
        return distances.argmin(dim=-1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [*] -> centroids [*, dim]."""
        return F.embedding(codes, self.embedding)

    # --- training ------------------------------------------------------------------------------

    @torch.no_grad()
    def initialize(self, x: torch.Tensor, iterations: int) -> None:
        """k-means on vectors x [N, dim] (sampled with replacement when N < size)."""
        size = self.embedding_sum.shape[0]
        pick = torch.randperm(len(x), device=x.device)[:size]
        if len(pick) < size:
            pick = torch.randint(0, len(x), (size,), device=x.device)
        centroids = x[pick].float().clone()
        centroids += 1e-3 * x.float().std() * torch.randn_like(centroids)
        for _ in range(iterations):
            codes = torch.cdist(x.float()[None], centroids[None])[0].argmin(dim=-1)
            counts = torch.bincount(codes, minlength=size).float()
            sums = torch.zeros_like(centroids).index_add_(0, codes, x.float())
            used = counts > 0
            centroids[used] = sums[used] / counts[used, None]
        # Usage starts as what k-means counted: a centroid no vector chose (duplicates when the
        # batch has fewer vectors than codes) is dead from the start and replaced at the next
        # check, instead of waiting hundreds of updates for its usage to decay.
        usage = counts.clamp(min=_EPSILON)
        self.embedding_sum.copy_(centroids * usage[:, None])
        self.cluster_usage.copy_(usage)
        self._initialized.fill_(1.0)
        self.refresh()

    @torch.no_grad()
    def update(self, x: torch.Tensor, codes: torch.Tensor, training: CodebookTraining) -> None:
        """One EMA step with vectors x [N, dim] assigned to codes [N]."""
        size = self.embedding_sum.shape[0]
        counts = torch.bincount(codes, minlength=size).to(self.cluster_usage.dtype)
        sums = torch.zeros_like(self.embedding_sum).index_add_(0, codes, x.to(self.embedding_sum))
        self.cluster_usage.mul_(training.decay).add_(counts, alpha=1 - training.decay)
        self.embedding_sum.mul_(training.decay).add_(sums, alpha=1 - training.decay)
        self._initialized.add_(1.0)  # also counts updates (Kyutai's only tests > 0)
        if int(self._initialized.item()) % training.replace_every == 0:
            self.replace_dead(x, training.dead_usage_ratio)
        self.refresh()

    @torch.no_grad()
    def replace_dead(self, x: torch.Tensor, ratio: float) -> int:
        """Codes used less than `ratio` x the mean become random vectors of x; how many."""
        mean_usage = self.cluster_usage.mean()
        dead = self.cluster_usage < ratio * mean_usage
        count = int(dead.sum())
        if count:
            picks = x[torch.randint(0, len(x), (count,), device=x.device)].to(self.embedding_sum)
            self.cluster_usage[dead] = mean_usage
            self.embedding_sum[dead] = picks * mean_usage
        return count


class ResidualVQ(nn.Module):
    """Projection in, residual quantization over `num_codebooks` codebooks, projection out."""

    def __init__(self, dim: int, codebook_dim: int, num_codebooks: int, codebook_size: int) -> None:
        super().__init__()
        self.input_proj = nn.Conv1d(dim, codebook_dim, 1, bias=False)
        self.output_proj = nn.Conv1d(codebook_dim, dim, 1, bias=False)
        self.codebooks = nn.ModuleList(
            [Codebook(codebook_dim, codebook_size) for _ in range(num_codebooks)]
        )

    def codebook(self, k: int) -> Codebook:
        return cast(Codebook, self.codebooks[k])

    def encode(self, x: torch.Tensor, num_codebooks: int) -> torch.Tensor:
        """Latent [B, D, T] -> codes [B, num_codebooks, T]."""
        B, _, T = x.shape
        residual = self.input_proj(x)  # [B, C, T], C = codebook_dim
        codes = []
        for k in range(num_codebooks):
            codebook = self.codebook(k)
            flat = residual.transpose(1, 2).reshape(B * T, -1)  # [B*T, C]
            index = codebook.encode(flat)  # [B*T]
            residual = residual - codebook.decode(index).view(B, T, -1).transpose(1, 2)
            codes.append(index.view(B, T))
        return torch.stack(codes, dim=1)  # [B, K, T]

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, K, T] (1 <= K <= num_codebooks) -> latent [B, D, T]."""
        quantized = self.codebook(0).decode(codes[:, 0])  # [B, T, C]
        for k in range(1, codes.shape[1]):
            quantized = quantized + self.codebook(k).decode(codes[:, k])
        return self.output_proj(quantized.transpose(1, 2))  # [B, D, T]

    def forward_train(
        self, x: torch.Tensor, num_codebooks: int, training: CodebookTraining | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Latent [B, D, T] -> (quantized latent [B, D, T], codes [B, K, T], commitment loss).

        The gradient flows straight through the quantizer to `x`; the commitment loss pulls each
        codebook's input towards its centroid. With `training`, codebooks learn from this batch
        (initialised by k-means on the first one); with None they stay as they are.
        """
        B, _, T = x.shape
        projected = self.input_proj(x).transpose(1, 2).reshape(B * T, -1)  # [B*T, C]
        residual, total = projected, torch.zeros_like(projected)
        commitment = projected.new_zeros(())
        codes = []
        for k in range(num_codebooks):
            codebook = self.codebook(k)
            if training is not None and not codebook._initialized.item():
                codebook.initialize(residual.detach(), training.kmeans_iterations)
            index = codebook.encode(residual.detach())  # [B*T]
            centroid = codebook.decode(index)  # a buffer: no gradient
            commitment = commitment + F.mse_loss(residual, centroid)
            if training is not None:
                codebook.update(residual.detach(), index, training)
            residual = residual - centroid
            total = total + centroid
            codes.append(index.view(B, T))
        quantized = projected + (total - projected).detach()  # straight-through estimator
        out = self.output_proj(quantized.view(B, T, -1).transpose(1, 2))
        return out, torch.stack(codes, dim=1), commitment


class TrainingQuantized(NamedTuple):
    quantized: torch.Tensor  # [B, D, T], the decoder's input
    codes: torch.Tensor  # [B, K, T]
    commitment: torch.Tensor  # scalar loss
    semantic: torch.Tensor  # [B, D, T], the first (semantic) codebooks' share of `quantized`


class SplitResidualVQ(nn.Module):
    """`rvq_first` (semantic) + `rvq_rest` (acoustic), codes concatenated in that order."""

    def __init__(self, cfg: MimiConfig) -> None:
        super().__init__()
        if not 0 < cfg.semantic_codebooks < cfg.total_codebooks:
            raise ValueError(
                f"need 0 < semantic_codebooks ({cfg.semantic_codebooks}) "
                f"< total_codebooks ({cfg.total_codebooks})"
            )
        self.dim = cfg.seanet.dimension
        self.semantic_codebooks = cfg.semantic_codebooks
        self.total_codebooks = cfg.total_codebooks
        self.rvq_first = ResidualVQ(
            self.dim, cfg.codebook_dim, cfg.semantic_codebooks, cfg.codebook_size
        )
        self.rvq_rest = ResidualVQ(
            self.dim,
            cfg.codebook_dim,
            cfg.total_codebooks - cfg.semantic_codebooks,
            cfg.codebook_size,
        )

    def _check_count(self, num_codebooks: int) -> None:
        if not self.semantic_codebooks <= num_codebooks <= self.total_codebooks:
            raise ValueError(
                f"number of codebooks {num_codebooks} must be between "
                f"{self.semantic_codebooks} and {self.total_codebooks}"
            )

    def encode(self, x: torch.Tensor, num_codebooks: int) -> torch.Tensor:
        """Latent [B, D, T] -> codes [B, num_codebooks, T] (long)."""
        if x.dim() != 3 or x.shape[1] != self.dim:
            raise ValueError(f"expected latent [B, {self.dim}, T], got {tuple(x.shape)}")
        self._check_count(num_codebooks)
        S = self.semantic_codebooks
        codes = self.rvq_first.encode(x, S)  # [B, S, T]
        if num_codebooks > S:
            # The acoustic RVQ quantizes the latent itself, not the semantic residual.
            rest = self.rvq_rest.encode(x, num_codebooks - S)  # [B, K - S, T]
            codes = torch.cat([codes, rest], dim=1)
        return codes

    def forward_train(
        self, x: torch.Tensor, num_codebooks: int, training: CodebookTraining | None
    ) -> TrainingQuantized:
        """Training: latent [B, D, T] -> quantized latent, codes and commitment loss.

        As `encode` then `decode`, with a straight-through gradient (see ResidualVQ)."""
        self._check_count(num_codebooks)
        S = self.semantic_codebooks
        semantic, codes, loss = self.rvq_first.forward_train(x, S, training)
        quantized = semantic
        if num_codebooks > S:
            rest, rest_codes, rest_loss = self.rvq_rest.forward_train(
                x, num_codebooks - S, training
            )
            quantized, loss = quantized + rest, loss + rest_loss
            codes = torch.cat([codes, rest_codes], dim=1)
        return TrainingQuantized(quantized, codes, loss, semantic)

    @torch.no_grad()
    def code_vectors(self, num_codebooks: int) -> torch.Tensor:
        """What each code adds to the latent: [num_codebooks, codebook_size, D]. Decoding is a
        sum of these (the output projections are linear), so codes with near vectors sound
        alike: the geometry an LM's code embeddings can start from."""
        self._check_count(num_codebooks)
        vectors = []
        for k in range(num_codebooks):
            rvq, j = (
                (self.rvq_first, k) if k < self.semantic_codebooks
                else (self.rvq_rest, k - self.semantic_codebooks)
            )  # fmt: skip
            centroids = rvq.codebook(j).embedding  # [size, C]
            vectors.append(rvq.output_proj(centroids.T[None])[0].T)  # [size, D]
        return torch.stack(vectors)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, K, T] -> latent [B, D, T]."""
        if codes.dim() != 3 or codes.dtype.is_floating_point:
            raise ValueError(f"expected integer codes [B, K, T], got {codes.dtype} {codes.shape}")
        self._check_count(codes.shape[1])
        S = self.semantic_codebooks
        quantized = self.rvq_first.decode(codes[:, :S])
        if codes.shape[1] > S:
            quantized = quantized + self.rvq_rest.decode(codes[:, S:])
        return quantized
