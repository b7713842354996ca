"""Scores of a detector: AUROC by ranks (ties count half), no scikit-learn needed."""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float
from torch import Tensor


def auroc(scores: Float[Tensor, " n"], labels: Bool[Tensor, " n"] | Tensor) -> float:
    """Probability that a random positive scores above a random negative (ties count half).

    The Mann-Whitney form with average ranks, so it is exact with ties.
    """
    scores, labels = scores.detach().double().flatten(), labels.detach().bool().flatten()
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.numel()} scores but {labels.numel()} labels")
    if not torch.isfinite(scores).all():
        raise ValueError("scores must be finite")
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUROC needs both classes; got {n_pos} positives and {n_neg} negatives")
    order = torch.argsort(scores)
    sorted_scores = scores[order]
    ranks = torch.empty_like(scores)
    # Average rank within each run of equal scores.
    _, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    average = ends - (counts.double() - 1) / 2
    ranks[order] = average[inverse]
    rank_sum = float(ranks[labels].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def auroc_per_column(scores: Float[Tensor, "n k"], labels: Tensor) -> Float[Tensor, " k"]:
    """`auroc` of every column of `scores` (e.g. every SAE latent) against the same labels."""
    return torch.tensor([auroc(scores[:, j], labels) for j in range(scores.shape[1])])
