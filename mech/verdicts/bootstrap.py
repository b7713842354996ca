"""Bootstrap intervals over the units a study repeats: finetune seeds, then the domains (or
questions, topics, noise draws) measured within each seed.

The resampling is hierarchical (a cluster bootstrap): the outer units (seeds) are drawn with
replacement, then, within each drawn seed, its inner units with replacement. Rows that share a
unit stay together, so two conditions measured on the same (seed, domain) cell are compared
inside one resample: the interval of a difference is *paired*. A level with one value (one seed)
is not resampled, and the interval says so in its `unit`: with one seed, an interval covers the
spread over domains, not over finetunes, and counts as one unit (`units`), which the verdict
rule judges inconclusive. Few outer units make a percentile interval too narrow; it is widened
to a t interval's width (`small_sample_widening`).

The statistic is any function of the resampled columns (a mean difference, a ratio of means, a
minimum of two lifts); a resample where it is undefined (nan, e.g. a ratio over a non-positive
denominator) counts against the interval: past `MAX_UNDEFINED` of them the interval is undefined.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

Columns = Mapping[str, np.ndarray]
Statistic = Callable[[Columns], float]

LEVEL = 0.95
N_RESAMPLES = 2000
MAX_UNDEFINED = 0.025
"""The share of resamples whose statistic may be undefined (nan) before the interval is: at
most the tail a 95% interval cuts off on one side."""


@dataclass(frozen=True)
class Estimate:
    """A statistic, its percentile bootstrap interval and what was resampled (`unit`, e.g.
    "5 seeds x 8 domains"); `units` is the number of outer units (1 when none varies)."""

    value: float
    ci_low: float
    ci_high: float
    unit: str
    units: int
    level: float = LEVEL

    @property
    def defined(self) -> bool:
        return bool(np.isfinite(self.value) and np.isfinite(self.ci_low) and np.isfinite(self.ci_high))

    def as_dict(self) -> dict:
        return {"value": self.value, "ci_low": self.ci_low, "ci_high": self.ci_high, "unit": self.unit,
                "units": self.units, "level": self.level}  # fmt: skip


def mean_of(column: str) -> Statistic:
    """The mean of `column` (a rate, or a paired difference computed per row)."""
    return lambda columns: float(np.mean(columns[column]))


def ratio_of_means(numerator: str, denominator: str) -> Statistic:
    """mean(numerator) / mean(denominator); undefined (nan) where the denominator's mean is not
    positive (a ratio of loss rises is meaningless when the reference did not rise)."""

    def ratio(columns: Columns) -> float:
        below = float(np.mean(columns[denominator]))
        return float(np.mean(columns[numerator]) / below) if below > 0 else float("nan")

    return ratio


def cluster_bootstrap(
    frame: pd.DataFrame,
    statistic: Statistic,
    *,
    levels: Sequence[str] = ("seed", "domain"),
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> Estimate:
    """`statistic` of `frame` and its percentile interval, resampling `levels` (outer first)
    hierarchically; columns named in `levels` but absent, or with one value, are not resampled."""
    if frame.empty:
        raise ValueError("no rows to bootstrap")
    varying = [name for name in levels if name in frame.columns and frame[name].nunique() > 1]
    columns = {name: frame[name].to_numpy() for name in frame.columns}
    value = _safe(statistic, columns)
    present = [name for name in levels if name in frame.columns]
    unit = " x ".join(_count(frame[name].nunique(), name) for name in present) or "no resampling unit"
    # The outer unit is the first level given, even when it does not vary: one seed is one unit,
    # however many domains it was measured on.
    units = frame[present[0]].nunique() if present else 1
    nan = float("nan")
    if not varying:
        return Estimate(value, nan, nan, unit, units, level)
    rows = _resampled_rows(frame, varying, n_resamples, np.random.default_rng(seed))
    draws = np.array([_safe(statistic, {k: v[picked] for k, v in columns.items()}) for picked in rows])
    if np.mean(~np.isfinite(draws)) > MAX_UNDEFINED or not np.isfinite(value):
        return Estimate(value, nan, nan, unit, units, level)
    tail = (1 - level) / 2 * 100
    low, high = (float(x) for x in np.nanpercentile(draws, [tail, 100 - tail]))
    widen = small_sample_widening(frame[varying[0]].nunique(), level)
    return Estimate(value, value - widen * (value - low), value + widen * (high - value), unit, units, level)


def small_sample_widening(units: int, level: float = LEVEL) -> float:
    """How much wider than the percentile interval the reported one is, for `units` outer units:
    t(units - 1) / z x sqrt(units / (units - 1)). The percentile bootstrap of a mean over few
    units is too narrow by about that (its spread is the plug-in sd, its quantiles normal ones);
    a t interval's width, which this restores, is 9.2x wider at 2 units, 1.6x at 5, 1.2x at 10."""
    from scipy import stats

    if units < 2:
        return float("inf")
    tail = 0.5 + level / 2
    return float(stats.t.ppf(tail, units - 1) / stats.norm.ppf(tail) * np.sqrt(units / (units - 1)))


def _safe(statistic: Statistic, columns: Columns) -> float:
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(statistic(columns))


def _count(n: int, name: str) -> str:
    return f"{n} {name}" + ("" if n == 1 else "s")


def _resampled_rows(
    frame: pd.DataFrame, levels: Sequence[str], n_resamples: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Row positions of each resample: outer units drawn with replacement, then (with a second
    level) each drawn unit's inner units with replacement; the rows of one innermost cell stay
    together. Drawn for every resample at once."""
    if len(levels) > 2:
        raise ValueError(f"at most two resampling levels, got {list(levels)}")
    outer = pd.factorize(frame[levels[0]].to_numpy())[0]
    cell_keys = frame[list(levels)].astype(str).agg("\0".join, axis=1).to_numpy()
    cells = pd.factorize(cell_keys)[0]
    order = np.argsort(cells, kind="stable")  # rows sorted by cell: a cell is a slice
    starts = np.searchsorted(cells[order], np.arange(cells.max() + 1))
    lengths = np.bincount(cells)
    cell_outer = np.zeros(len(lengths), dtype=int)
    cell_outer[cells] = outer
    # The cells of each outer unit, in a padded table: (outer units, most cells one has).
    n_outer = outer.max() + 1
    per_outer = [np.flatnonzero(cell_outer == g) for g in range(n_outer)]
    width = max(len(c) for c in per_outer)
    table = np.stack([np.pad(c, (0, width - len(c))) for c in per_outer])
    counts = np.array([len(c) for c in per_outer])
    picked_outer = rng.integers(n_outer, size=(n_resamples, n_outer))
    if len(levels) == 1:
        picked_cells = table[picked_outer, 0][..., None]
    else:  # within each drawn unit, as many of its cells as it has, with replacement
        slots = np.arange(width)[None, None, :] < counts[picked_outer][..., None]
        inner = (rng.random((n_resamples, n_outer, width)) * counts[picked_outer][..., None]).astype(int)
        picked_cells = np.where(slots, table[picked_outer[..., None], inner], -1)
    resamples = []
    for chosen in picked_cells.reshape(n_resamples, -1):
        chosen = chosen[chosen >= 0]
        size = lengths[chosen]
        within = np.arange(size.sum()) - np.repeat(np.cumsum(size) - size, size)
        resamples.append(order[np.repeat(starts[chosen], size) + within])
    return resamples
