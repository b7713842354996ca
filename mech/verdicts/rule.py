"""The one verdict rule, the same function for every finding.

A finding states an effect (a difference, a ratio, an AUROC), the direction the paper reports
(+1: larger, -1: smaller) and a margin: the bound the effect must clear to count, set once per
finding in `mech.verdicts.margins`. With the effect's 95% interval [low, high], read in the
paper's direction:

- `reproduced`: the whole interval lies beyond the bound;
- `not reproduced`: the whole interval lies short of it (inside the margin, or on the other side);
- `inconclusive`: the interval straddles the bound, or there is none (an undefined statistic),
  or the outer unit was measured once (one seed: one finetune's luck is not the finding's).

The bound lies strictly beyond the null (a `Bound` refuses a zero width), so a null effect is
never `reproduced`, however many units measure it. (An equivalence finding, "stays within the
margin", is the one kind whose null lies inside its bound.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mech.verdicts.bootstrap import Estimate

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
INCONCLUSIVE = "inconclusive"
VERDICTS = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)
MIN_UNITS = 2
"""Outer units (finetune seeds, for a finetune's finding) below which nothing is decided: one
finetune's effect cannot be told from that finetune's luck."""


@dataclass(frozen=True)
class Bound:
    """What an effect must clear: `null` (no effect: 0 for a difference, 1 for a ratio, 0.5 for
    an AUROC), the `bound` itself, beyond the null in the paper's `direction`, and how the bound
    was set (`basis`, printed with the verdict)."""

    null: float
    bound: float
    direction: int
    basis: str
    equivalence: bool = False
    """The finding is that the effect stays *within* the bound (a narrow solution's other domains
    stay near the chat model): the null lies inside, and the paper's direction is towards it."""

    def __post_init__(self) -> None:
        if self.direction not in (1, -1):
            raise ValueError(f"direction is +1 or -1, not {self.direction}")
        if not self.equivalence and not (self.direction * (self.bound - self.null) > 0):
            raise ValueError(
                f"the bound {self.bound} must lie beyond the null {self.null} in direction {self.direction:+d}"
            )

    def text(self) -> str:
        return f"{'>' if self.direction > 0 else '<'} {self.bound:.4g} ({self.basis})"


def verdict(estimate: Estimate, bound: Bound) -> str:
    """`reproduced`, `not reproduced` or `inconclusive` for `estimate` against `bound`."""
    if not estimate.defined or estimate.units < MIN_UNITS:
        return INCONCLUSIVE  # no interval (undefined, nothing resampled) or one outer unit
    low, high, edge = estimate.ci_low, estimate.ci_high, bound.bound
    if bound.direction < 0:
        low, high, edge = -high, -low, -edge
    if low > edge:
        return REPRODUCED
    if high < edge:
        return NOT_REPRODUCED
    return INCONCLUSIVE


def combine(verdicts: list[str]) -> str:
    """A finding made of conditions that must all hold (e.g. narrow: the narrow rate far above
    the chat model's *and* the other domains' within the margin of it): reproduced when every
    one is, not reproduced when any one is not, inconclusive otherwise."""
    if not verdicts:
        return INCONCLUSIVE
    if all(v == REPRODUCED for v in verdicts):
        return REPRODUCED
    if any(v == NOT_REPRODUCED for v in verdicts):
        return NOT_REPRODUCED
    return INCONCLUSIVE


def any_of(verdicts: list[str]) -> str:
    """A finding that holds when one of several pre-set variants holds (e.g. a narrow solution at
    some KL weight; each variant's interval widened for the number tried, see `level_for`)."""
    if any(v == REPRODUCED for v in verdicts):
        return REPRODUCED
    if verdicts and all(v == NOT_REPRODUCED for v in verdicts):
        return NOT_REPRODUCED
    return INCONCLUSIVE


def level_for(tries: int, level: float = 0.95) -> float:
    """The interval level of each of `tries` variants so that the family errs at most 1 - level
    (Bonferroni)."""
    return 1 - (1 - level) / max(1, tries)


def describe_row(row: dict, fmt: str = ".3g") -> str:
    """effect [CI] vs bound, over what: how every verdict is printed (`row` holds an `Estimate`'s
    fields and a bound's text, as a finding row does)."""
    if not math.isfinite(row["value"]):
        return f"{row['effect']}: undefined vs {row['bound']} ({row['unit']})"
    finite = math.isfinite(row["ci_low"]) and math.isfinite(row["ci_high"])
    ci = f"[{row['ci_low']:{fmt}}, {row['ci_high']:{fmt}}]" if finite else "[no interval]"
    return f"{row['effect']} {row['value']:{fmt}} {ci} vs {row['bound']} ({row['unit']})"
