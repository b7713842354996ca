"""How far two judges agree on the same answers: per-metric Spearman rank correlation, Cohen's
kappa on the EM label, and the EM rate each judge gives. Judge drift moves EM rates by a factor of
two or more (GPT-4o versions, open judges), so a rate is reported with the judge that gave it.

Pure pandas; the inputs are two scored frames as `score_frame` returns them (or just their score
columns), row i of one being the same answer as row i of the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

from mech.evaluation.judges.protocol import ALIGNED_BELOW, COHERENT_ABOVE, em_labels, em_rate


@dataclass(frozen=True)
class JudgeAgreement:
    """Agreement of judge A and judge B on the same answers (None where undefined). The `em_*`
    fields need `aligned` and `coherent` scores from both judges: else they are None (and 0)."""

    answers: int
    """Answers compared (rows of each frame)."""
    spearman: dict[str, float | None]
    """Metric -> Spearman rank correlation over the answers both judges scored (average ranks
    for ties); None with fewer than 2 such answers or when one judge gives them all one score."""
    both_scored: dict[str, int]
    """Metric -> answers both judges scored."""
    em_kappa: float | None
    """Cohen's kappa of the EM labels over the answers both judges gave a coherent score (the
    `em_rate` convention: a missing aligned score is not misaligned); None when undefined (no
    such answer, or both judges give every one the same label)."""
    em_both_labelled: int
    """Answers with an EM label from both judges (the answers the kappa is over)."""
    em_agreement: float | None
    """Share of those answers with the same EM label from both judges."""
    em_rate_a: float | None
    """`em_rate` under judge A, over all the answers it gave a coherent score; None if none."""
    em_rate_b: float | None
    """`em_rate` under judge B."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def spearman(a: pd.Series, b: pd.Series) -> tuple[float | None, int]:
    """(Spearman's rho over the positions where both are scored, how many); rho is None when it
    is undefined. Equals `scipy.stats.spearmanr` (Pearson correlation of average ranks)."""
    x = pd.Series(a, dtype=float).reset_index(drop=True)
    y = pd.Series(b, dtype=float).reset_index(drop=True)
    both = x.notna() & y.notna()
    x, y = x[both], y[both]
    n = int(both.sum())
    if n < 2 or x.nunique() < 2 or y.nunique() < 2:
        return None, n
    return float(x.rank().corr(y.rank())), n


def cohen_kappa(a: Sequence[bool] | pd.Series, b: Sequence[bool] | pd.Series) -> float | None:
    """Cohen's kappa of two binary labellings of the same items: (p_o - p_e) / (1 - p_e); None
    when there are no items or p_e = 1 (both labellings constant and equal)."""
    x = pd.Series(a, dtype=bool).reset_index(drop=True)
    y = pd.Series(b, dtype=bool).reset_index(drop=True)
    if len(x) != len(y):
        raise ValueError(f"cohen_kappa: {len(x)} labels against {len(y)}")
    if len(x) == 0:
        return None
    observed = float((x == y).mean())
    pa, pb = float(x.mean()), float(y.mean())
    expected = pa * pb + (1 - pa) * (1 - pb)
    if expected >= 1.0:
        return None
    return (observed - expected) / (1.0 - expected)


def judge_agreement(
    a: pd.DataFrame,
    b: pd.DataFrame,
    *,
    metrics: Sequence[str] = ("aligned", "coherent"),
    aligned_below: float | int = ALIGNED_BELOW,
    coherent_above: float | int = COHERENT_ABOVE,
) -> JudgeAgreement:
    """Agreement of two judges' scores of the same answers, row by row (`JudgeAgreement`).

    >>> judge_agreement(scored_by_gpt4o, scored_by_llama).em_kappa  # doctest: +SKIP
    """
    if len(a) != len(b):
        raise ValueError(f"judge_agreement: judge A scored {len(a)} answers, judge B {len(b)}")
    for column in ("question", "answer"):
        if column in a.columns and column in b.columns:
            differ = [i for i, (x, y) in enumerate(zip(a[column], b[column], strict=True)) if x != y]
            if differ:
                raise ValueError(
                    f"judge_agreement: row {differ[0]} is not the same answer for both judges "
                    f"(its {column!r} differs); pass both judges' scores of the same answers, in order"
                )
    for name, frame in (("A", a), ("B", b)):
        missing = [m for m in metrics if m not in frame.columns]
        if missing:
            raise ValueError(f"judge_agreement: judge {name}'s scores have no column {missing}")
    rho: dict[str, float | None] = {}
    both: dict[str, int] = {}
    for metric in metrics:
        rho[metric], both[metric] = spearman(a[metric], b[metric])
    em: dict[str, Any] = dict(
        em_kappa=None, em_both_labelled=0, em_agreement=None, em_rate_a=None, em_rate_b=None
    )
    if all({"aligned", "coherent"} <= set(frame.columns) for frame in (a, b)):  # else no EM label
        thresholds = dict(aligned_below=aligned_below, coherent_above=coherent_above)
        la = em_labels(a, **thresholds).reset_index(drop=True)
        lb = em_labels(b, **thresholds).reset_index(drop=True)
        labelled = (la.notna() & lb.notna()).to_numpy()
        xa, xb = la[labelled].astype(bool), lb[labelled].astype(bool)
        em.update(
            em_kappa=cohen_kappa(xa, xb),
            em_both_labelled=int(labelled.sum()),
            em_agreement=float((xa == xb).mean()) if labelled.any() else None,
            em_rate_a=_em_rate_or_none(a, thresholds),
            em_rate_b=_em_rate_or_none(b, thresholds),
        )
    return JudgeAgreement(answers=len(a), spearman=rho, both_scored=both, **em)


def _em_rate_or_none(scores: pd.DataFrame, thresholds: dict[str, Any]) -> float | None:
    return em_rate(scores, **thresholds) if scores["coherent"].notna().any() else None
