"""Geometry of directions: pairwise cosines, and principal components of training trajectories
(the authors' "training lens": checkpoints of adapters across KL weights, projected on the top PCs
of all of them together)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor


def cosine_matrix(vectors: Mapping[str, Float[Tensor, " d"]]) -> pd.DataFrame:
    """Square frame of cosine similarities, indexed and labelled by the vectors' names."""
    names = list(vectors)
    if not names:
        raise ValueError("no vectors to compare")
    widths = {tuple(v.shape) for v in vectors.values()}
    if len(widths) != 1 or len(next(iter(widths))) != 1:
        raise ValueError(f"vectors must be 1-d and of one width; got shapes {sorted(widths)}")
    stacked = torch.stack([vectors[n].detach().float() for n in names])
    norms = stacked.norm(dim=1, keepdim=True)
    if (norms == 0).any():
        zero = [n for n, z in zip(names, (norms == 0).flatten().tolist(), strict=True) if z]
        raise ValueError(f"zero vectors have no direction: {zero}")
    unit = stacked / norms
    return pd.DataFrame((unit @ unit.T).numpy(), index=names, columns=names)


def trajectory_pca(
    trajectories: Mapping[str, Sequence[tuple[int, Float[Tensor, " p"]]]], *, n_components: int = 2
) -> tuple[pd.DataFrame, list[float]]:
    """Project every checkpoint of every trajectory on the top principal components of all of them.

    `trajectories` maps a label (e.g. "KL 10") to `(step, flat parameters)` pairs. Returns a
    frame (label, step, pc1, pc2, ...) and each component's share of the variance.
    """
    labels, steps, points = [], [], []
    for label, trajectory in trajectories.items():
        for step, params in trajectory:
            labels.append(label)
            steps.append(step)
            points.append(params.detach().float().flatten())
    if len(points) < 2:
        raise ValueError("PCA needs at least two checkpoints")
    if len({p.numel() for p in points}) != 1:
        raise ValueError("checkpoints of different sizes cannot share a PCA")
    x = torch.stack(points)
    centred = x - x.mean(0)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    k = min(n_components, vh.shape[0])
    projected = centred @ vh[:k].T
    variance = s.square()
    explained = (variance[:k] / variance.sum()).tolist()
    frame = pd.DataFrame({"label": labels, "step": steps})
    for j in range(k):
        frame[f"pc{j + 1}"] = projected[:, j].numpy()
    return frame, explained
