"""A finding row: an effect, its interval, its bound and the verdict the rule gives."""

from __future__ import annotations

from mech.verdicts.bootstrap import Estimate
from mech.verdicts.rule import Bound, describe_row, verdict

Row = dict


def judged(
    finding: str, adapter: str, effect: str, estimate: Estimate, bound: Bound, measured: str, source: str,
    *, verdict_: str | None = None, note: str = "",
) -> Row:  # fmt: skip
    """One finding row: the estimate, its bound and the verdict the rule gives (or `verdict_`,
    for findings made of several conditions, whose other conditions `note` says briefly)."""
    row = {"finding": finding, "adapter": adapter, "effect": effect, **estimate.as_dict(), "bound": bound.text(),
           "null": bound.null, "bound_value": bound.bound, "verdict": verdict_ or verdict(estimate, bound),
           "note": note, "measured": measured, "source": source}  # fmt: skip
    return {**row, "estimate": describe_row(row) + (f"; {note}" if note else "")}


def no_estimate(unit: str) -> Estimate:
    return Estimate(float("nan"), float("nan"), float("nan"), unit, 0)
