"""Linear probes on residual activations: logistic regression (in torch) and mean-diff.

Both score examples by a direction in activation space, so their directions can be compared
with steering vectors and mean-diff directions (`probes.geometry`). Labels are booleans
(True = the property, e.g. a misaligned answer or a malicious persona). A probe is scored on
examples it was not fit on: `split` / `stratified_split` hold some out, and `transfer_auroc`
scores a probe on its own data set's held-out part only.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from probes.metrics import auroc


@dataclass(frozen=True)
class ProbeConfig:
    l2: float = 1e-3
    """Weight decay on the (standardised) weights; the fit is full-batch L-BFGS."""
    max_iter: int = 200


def _check(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"probes need x [n, d] and y [n]; got {tuple(x.shape)} and {tuple(y.shape)}")
    y = y.bool()
    if y.all() or not y.any():
        raise ValueError("a probe needs examples of both classes")
    return x.detach().float(), y


@dataclass(frozen=True)
class LogisticProbe:
    """`sigmoid(x . weight + bias)`; `weight` is in the raw activation space."""

    weight: Float[Tensor, " d_model"]
    bias: float

    @classmethod
    def fit(cls, x: Float[Tensor, "n d_model"], y: Bool[Tensor, " n"] | Tensor, cfg: ProbeConfig = ProbeConfig()) -> LogisticProbe:  # fmt: skip
        """Fit on standardised features (residual widths differ a lot), then fold the scaling back."""
        x, y = _check(x, y)
        mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
        z = (x - mean) / std
        w = torch.zeros(x.shape[1], requires_grad=True)
        b = torch.zeros((), requires_grad=True)
        optimizer = torch.optim.LBFGS([w, b], max_iter=cfg.max_iter, line_search_fn="strong_wolfe")
        target = y.float()

        def closure() -> Tensor:
            optimizer.zero_grad()
            loss = (
                torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, target)
                + cfg.l2 * w.square().sum()
            )
            loss.backward()
            return loss

        optimizer.step(closure)
        weight = (w / std).detach()
        return cls(weight, float(b.detach() - (mean * weight).sum()))

    def score(self, x: Float[Tensor, "n d_model"]) -> Float[Tensor, " n"]:
        """Logits."""
        return x.float() @ self.weight + self.bias

    @property
    def direction(self) -> Float[Tensor, " d_model"]:
        return self.weight


@dataclass(frozen=True)
class MeanDiffProbe:
    """Projection onto mean(positive) - mean(negative), thresholded at the midpoint of the means."""

    direction: Float[Tensor, " d_model"]
    threshold: float

    @classmethod
    def fit(cls, x: Float[Tensor, "n d_model"], y: Bool[Tensor, " n"] | Tensor) -> MeanDiffProbe:
        x, y = _check(x, y)
        pos, neg = x[y].mean(0), x[~y].mean(0)
        direction = pos - neg
        return cls(direction, float(((pos + neg) / 2) @ direction))

    def score(self, x: Float[Tensor, "n d_model"]) -> Float[Tensor, " n"]:
        return x.float() @ self.direction - self.threshold


Probe = LogisticProbe | MeanDiffProbe


def evaluate(probe: Probe, x: Float[Tensor, "n d_model"], y: Bool[Tensor, " n"] | Tensor) -> dict[str, float]:
    """AUROC and accuracy (score > 0) of `probe` on `(x, y)`."""
    x, y = _check(x, y)
    scores = probe.score(x)
    return {
        "auroc": auroc(scores, y),
        "accuracy": float(((scores > 0) == y).float().mean()),
        "n": int(len(y)),
    }


def split(n: int, *, test_fraction: float = 0.3, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Boolean train / test masks over `n` examples (seeded)."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    test = torch.zeros(n, dtype=torch.bool)
    test[order[: max(1, round(n * test_fraction))]] = True
    return ~test, test


def stratified_split(
    labels: Bool[Tensor, " n"] | Tensor, *, heldout_fraction: float = 0.5, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Boolean selection / held-out masks over `labels` (seeded), each class split on its own so
    both sides keep the class ratio; a class of two or more examples has some on each side."""
    if not 0 < heldout_fraction < 1:
        raise ValueError(f"heldout_fraction must lie in (0, 1), got {heldout_fraction}")
    labels = labels.detach().bool().flatten().cpu()
    heldout = torch.zeros(len(labels), dtype=torch.bool)
    rng = random.Random(seed)
    for value in (True, False):
        rows = torch.nonzero(labels == value).flatten().tolist()
        rng.shuffle(rows)
        n = min(max(1, round(len(rows) * heldout_fraction)), len(rows) - 1) if len(rows) > 1 else 0
        heldout[rows[:n]] = True
    return ~heldout, heldout


def transfer_auroc(
    probes: Mapping[str, Probe],
    data: Mapping[str, tuple[Tensor, Tensor]],
    heldout: Mapping[str, Tensor],
) -> pd.DataFrame:
    """AUROC of every probe on every data set of `data` (name -> (x, y)).

    A probe on the data set it shares a name with is scored on that set's held-out rows only
    (`heldout[name]`, a boolean mask; the rest is what it was fit on); on any other set, on all of
    its rows. Columns probe, scored_on, split ("held-out" or "all"), n, auroc.
    """
    rows = []
    for probe_name, probe in probes.items():
        for data_name, (x, y) in data.items():
            own = data_name == probe_name
            rows_used = heldout[data_name] if own else torch.ones(len(y), dtype=torch.bool)
            scored = evaluate(probe, x[rows_used], y[rows_used])
            rows.append({"probe": probe_name, "scored_on": data_name, "split": "held-out" if own else "all",
                         "n": scored["n"], "auroc": scored["auroc"]})  # fmt: skip
    return pd.DataFrame(rows, columns=["probe", "scored_on", "split", "n", "auroc"])
