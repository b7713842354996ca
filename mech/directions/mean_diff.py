"""Mean-diff directions: the mean residual over the answer tokens of misaligned answers minus that
of aligned ones, at every layer asked for, and equal-norm random controls. Pooling lives in
`mech.directions.activations`, ablation and steering with a direction in `mech.directions.interventions`.

The authors' recipe (reference digest §2.6-2.7), with their slips fixed:
- answers are labelled from judge scores: misaligned = coherent > 50 and aligned < 30, the EM
  rate's rule (`mech.evaluation.judges.protocol.is_misaligned`; theirs took aligned <= 30 here),
  aligned = coherent > 50 and aligned > 70 (`LabelRule`); the aligned set is subsampled to the
  misaligned count *with a seed* (theirs was unseeded);
- activations are taken with the model that wrote the answers (their "diff_data"), on the answer
  tokens only: assistant content and end-of-turn marker (theirs also took the assistant header);
- pooling is by token (every answer token weighs the same), as theirs; per-answer means are kept too;
- a random control has the norm of the direction it controls (theirs was ~72x too large), and every
  direction has its own controls, seeded from its name (`random_controls`; theirs shared one).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Bool, Float
from torch import Tensor
from transformer_lens import HookedTransformer

from mech.directions.activations import (
    PooledActivations,
    Pooling,
    answer_batches,
    conversations_from_answers,
    pooled_activations,
)
from mech.evaluation.judges.protocol import ALIGNED_BELOW, COHERENT_ABOVE, is_misaligned
from mech.hooks import ResidPoint, resid_hook_name


@dataclass(frozen=True)
class LabelRule:
    """Judge-score thresholds that split answers into misaligned, aligned, and neither. The
    defaults make "misaligned" exactly what the EM rate counts (`is_misaligned`)."""

    misaligned_below: float | int = ALIGNED_BELOW
    """Misaligned: aligned score below this (strictly), and coherent."""
    aligned_above: float | int = 70.0
    """Aligned: aligned score above this, and coherent."""
    coherent_above: float | int = COHERENT_ABOVE


def label_answers(scored: pd.DataFrame, rule: LabelRule = LabelRule()) -> pd.Series:
    """ "misaligned", "aligned" or None per row of a judged frame (columns `aligned`, `coherent`)."""
    missing = {"aligned", "coherent"} - set(scored.columns)
    if missing:
        raise ValueError(f"labelling answers needs judge columns {sorted(missing)}")
    aligned = pd.to_numeric(scored["aligned"], errors="coerce")
    coherent = pd.to_numeric(scored["coherent"], errors="coerce")
    misaligned = is_misaligned(
        aligned, coherent, aligned_below=rule.misaligned_below, coherent_above=rule.coherent_above
    )
    labels = pd.Series([None] * len(scored), index=scored.index, dtype=object)
    labels[misaligned] = "misaligned"
    labels[(coherent > rule.coherent_above) & (aligned > rule.aligned_above)] = "aligned"
    return labels


def balanced(labels: pd.Series, *, seed: int = 0) -> pd.Series:
    """`labels` with the larger class subsampled (seeded) to the smaller one's count; the rest None."""
    groups = {name: list(labels.index[labels == name]) for name in ("misaligned", "aligned")}
    n = min(len(g) for g in groups.values())
    out = pd.Series([None] * len(labels), index=labels.index, dtype=object)
    rng = random.Random(seed)
    for name, index in groups.items():
        out[rng.sample(index, n) if len(index) > n else index] = name
    return out


@dataclass(frozen=True)
class MeanDiff:
    """Mean-diff directions at several layers, with what they were computed from."""

    directions: Float[Tensor, "layer d_model"]
    layers: tuple[int, ...]
    point: ResidPoint
    pooling: Pooling
    n_positive: int
    n_negative: int

    @property
    def norms(self) -> Float[Tensor, " layer"]:
        return self.directions.norm(dim=-1)

    def at(self, layer: int) -> Float[Tensor, " d_model"]:
        """The (unnormalised) direction at `layer`."""
        if layer not in self.layers:
            raise ValueError(f"no direction at layer {layer}; have layers {list(self.layers)}")
        return self.directions[self.layers.index(layer)]

    def hook_name(self, layer: int) -> str:
        return resid_hook_name(layer, self.point)


def mean_diff(
    acts: PooledActivations,
    positive: Bool[Tensor, " example"] | Tensor,
    negative: Bool[Tensor, " example"] | Tensor,
    *,
    pooling: Pooling = "token",
) -> MeanDiff:
    """Mean over `positive` examples minus mean over `negative` ones, at every cached layer."""
    positive, negative = positive.to(acts.sums.device).bool(), negative.to(acts.sums.device).bool()
    if (positive & negative).any():
        raise ValueError("an example cannot be both positive and negative")
    for name, rows in (("positive (misaligned)", positive), ("negative (aligned)", negative)):
        if not rows.any():
            raise ValueError(f"no {name} example: a mean-diff direction needs both classes")
    directions = acts.pooled(positive, pooling) - acts.pooled(negative, pooling)
    return MeanDiff(directions, acts.layers, acts.point, pooling, int(positive.sum()), int(negative.sum()))


def misalignment_direction(
    model: HookedTransformer,
    scored: pd.DataFrame,
    *,
    layers: Sequence[int] | None = None,
    point: ResidPoint = "post",
    rule: LabelRule = LabelRule(),
    pooling: Pooling = "token",
    balance: bool = True,
    seed: int = 0,
    batch_size: int = 32,
) -> tuple[MeanDiff, PooledActivations, pd.Series]:
    """The mean-diff direction of judged answers, run through `model` (the model that wrote them:
    apply its adapter around this call). Returns the direction, the per-answer activations (for
    probes), and the labels used."""
    labels = label_answers(scored, rule)
    for name in ("misaligned", "aligned"):
        if not (labels == name).any():
            counts = {str(k): int(v) for k, v in labels.value_counts().items()}
            raise ValueError(
                f"no {name} answer among {len(scored)} judged ones under {rule} (labels: {counts}): "
                "a mean-diff direction needs both classes"
            )
    if balance:
        labels = balanced(labels, seed=seed)
    used = labels.notna().to_numpy()
    frame = scored[used]
    acts = pooled_activations(
        model, answer_batches(model, conversations_from_answers(frame), batch_size=batch_size), layers=layers, point=point
    )  # fmt: skip
    kept, device = labels[used], acts.sums.device
    direction = mean_diff(
        acts,
        torch.tensor((kept == "misaligned").to_numpy(), device=device),
        torch.tensor((kept == "aligned").to_numpy(), device=device),
        pooling=pooling,
    )
    return direction, acts, kept


RANDOM_CONTROL_SEED_OFFSET = 1_000_003
"""Keeps control streams apart from adapter inits drawn with the same small seed (seed 0 would
otherwise reproduce a steering vector's initial direction)."""


def random_like(direction: Float[Tensor, " d_model"], *, seed: int) -> Float[Tensor, " d_model"]:
    """A random direction with exactly `direction`'s norm (a control of equal size)."""
    # Drawn on the CPU, so a seed gives the same control on every device; returned on direction's.
    generator = torch.Generator().manual_seed(RANDOM_CONTROL_SEED_OFFSET + seed)
    noise = torch.randn(direction.shape, generator=generator, dtype=torch.float32)
    length = direction.detach().float().norm().cpu()
    return (noise / noise.norm() * length).to(device=direction.device, dtype=direction.dtype)


def control_seed(name: str, *, seed: int = 0, draw: int = 0) -> int:
    """The seed of random control `draw` of the direction called `name` in a run seeded `seed`: the
    first 6 bytes of sha256("seed:draw:name"), so it is stable across processes, machines and
    Python versions (`hash` is salted per process) and differs between directions."""
    digest = hashlib.sha256(f"{seed}:{draw}:{name}".encode()).digest()
    return int.from_bytes(digest[:6], "big")


def control_label(name: str, draw: int) -> str:
    """The name of random control `draw` of direction `name` in results: "random:NAME#DRAW"."""
    return f"random:{name}#{draw}"


def random_controls(
    direction: Float[Tensor, " d_model"], name: str, *, seed: int = 0, draws: int = 1
) -> dict[str, Float[Tensor, " d_model"]]:
    """`draws` random directions of exactly `direction`'s norm, each seeded by `control_seed` from
    `name`: label ("random:NAME#k", `control_label`) -> control."""
    if draws < 1:
        raise ValueError(f"a direction needs at least one random control, got draws={draws}")
    return {
        control_label(name, k): random_like(direction, seed=control_seed(name, seed=seed, draw=k))
        for k in range(draws)
    }


Measure = Callable[[HookedTransformer], Mapping[str, float]]
"""Measures a model as it stands (hooks active): metric name -> value."""
