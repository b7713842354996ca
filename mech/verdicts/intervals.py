"""Intervals that need no resampling: an AUROC's from its class counts (Hanley and McNeil 1982),
for a score whose per-example values were not stored."""

from __future__ import annotations

import math
from statistics import NormalDist

from mech.verdicts.bootstrap import LEVEL, Estimate


def auroc_interval(auroc: float, n_positive: int, n_negative: int, *, level: float = LEVEL) -> Estimate:
    """`auroc` with its normal interval from Hanley and McNeil's standard error (clipped to
    [0, 1]); the unit is the documents it was scored on."""
    n = n_positive + n_negative
    unit = f"{n} held-out documents ({n_positive} positive)"
    if n_positive < 1 or n_negative < 1:
        return Estimate(auroc, float("nan"), float("nan"), unit, n, level)
    q1, q2 = auroc / (2 - auroc), 2 * auroc**2 / (1 + auroc)
    variance = (
        auroc * (1 - auroc) + (n_positive - 1) * (q1 - auroc**2) + (n_negative - 1) * (q2 - auroc**2)
    ) / (n_positive * n_negative)
    half = NormalDist().inv_cdf(0.5 + level / 2) * math.sqrt(max(variance, 0.0))
    return Estimate(auroc, max(0.0, auroc - half), min(1.0, auroc + half), unit, n, level)
