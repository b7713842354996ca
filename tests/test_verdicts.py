"""The verdict rule on synthetic results: a null effect of any size of study is never
`reproduced`; a large effect with little noise is; an effect whose interval straddles the margin
is `inconclusive`; and the bootstrap resamples the units it says it does."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mech.verdicts.bootstrap import cluster_bootstrap, mean_of, ratio_of_means, small_sample_widening
from mech.verdicts.margins import RateNoise, rate_margin, rate_rise, rate_stays, ratio_above
from mech.verdicts.rule import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    REPRODUCED,
    Bound,
    any_of,
    combine,
    level_for,
    verdict,
)

MARGIN = Bound(0.0, 0.03, +1, "test margin")


def study(effect: float, noise: float, seeds: int, domains: int, rng: np.random.Generator) -> pd.DataFrame:
    """Paired differences per (seed, domain): a seed effect and a cell effect around `effect`."""
    seed_shift = rng.normal(0, noise, size=seeds)
    return pd.DataFrame(
        [
            {"seed": s, "domain": d, "diff": effect + seed_shift[s] + rng.normal(0, noise)}
            for s in range(seeds)
            for d in range(domains)
        ]  # fmt: skip
    )


@pytest.mark.parametrize("seeds,domains", [(1, 2), (2, 2), (3, 8), (5, 8), (10, 20), (30, 10)])
def test_a_null_effect_is_never_reproduced(seeds, domains):
    rng = np.random.default_rng(seeds * 100 + domains)
    for draw in range(20):
        frame = study(0.0, 0.02, seeds, domains, rng)
        estimate = cluster_bootstrap(frame, mean_of("diff"), n_resamples=300, seed=draw)
        assert verdict(estimate, MARGIN) != REPRODUCED


def test_a_null_effect_of_a_large_study_is_not_reproduced():
    frame = study(0.0, 0.01, 40, 40, np.random.default_rng(0))
    assert verdict(cluster_bootstrap(frame, mean_of("diff"), n_resamples=300), MARGIN) == NOT_REPRODUCED


def test_a_large_effect_with_little_noise_is_reproduced():
    frame = study(0.2, 0.005, 5, 8, np.random.default_rng(1))
    estimate = cluster_bootstrap(frame, mean_of("diff"))
    assert verdict(estimate, MARGIN) == REPRODUCED
    assert estimate.ci_low > 0.03 and estimate.unit == "5 seeds x 8 domains" and estimate.units == 5


def test_an_effect_straddling_the_margin_is_inconclusive():
    frame = study(0.03, 0.02, 5, 8, np.random.default_rng(2))
    estimate = cluster_bootstrap(frame, mean_of("diff"))
    assert estimate.ci_low < 0.03 < estimate.ci_high
    assert verdict(estimate, MARGIN) == INCONCLUSIVE


def test_an_effect_the_other_way_is_not_reproduced_and_direction_flips_the_reading():
    frame = study(-0.2, 0.005, 5, 8, np.random.default_rng(3))
    estimate = cluster_bootstrap(frame, mean_of("diff"))
    assert verdict(estimate, MARGIN) == NOT_REPRODUCED
    assert verdict(estimate, Bound(0.0, -0.03, -1, "falls")) == REPRODUCED


def test_one_number_has_no_interval_and_is_inconclusive():
    frame = pd.DataFrame({"seed": [0], "domain": ["a"], "diff": [0.5]})
    estimate = cluster_bootstrap(frame, mean_of("diff"))
    assert not estimate.defined and estimate.unit == "1 seed x 1 domain"
    assert verdict(estimate, MARGIN) == INCONCLUSIVE


def test_one_seed_resamples_the_domains_says_so_and_decides_nothing():
    frame = study(0.2, 0.005, 1, 8, np.random.default_rng(4))
    estimate = cluster_bootstrap(frame, mean_of("diff"))
    assert estimate.unit == "1 seed x 8 domains" and estimate.defined and estimate.units == 1
    assert verdict(estimate, MARGIN) == INCONCLUSIVE


def test_few_units_widen_the_interval_to_a_t_intervals_width():
    assert small_sample_widening(2) == pytest.approx(9.17, abs=0.01)
    assert small_sample_widening(5) == pytest.approx(1.58, abs=0.01)
    assert small_sample_widening(1000) == pytest.approx(1.0, abs=0.01)


def test_rows_of_one_cell_stay_together_so_a_difference_is_paired():
    # Two conditions share a large per-cell offset; their difference is exactly 0.1 in every cell.
    rng = np.random.default_rng(5)
    rows = []
    for seed in range(5):
        for domain in range(8):
            offset = rng.normal(0, 1.0)
            rows += [{"seed": seed, "domain": domain, "condition": c, "value": offset + v}
                     for c, v in (("a", 0.1), ("b", 0.0))]  # fmt: skip
    frame = pd.DataFrame(rows)

    def difference(columns):
        a = columns["condition"] == "a"
        return float(columns["value"][a].mean() - columns["value"][~a].mean())

    estimate = cluster_bootstrap(frame, difference)
    assert estimate.ci_low == pytest.approx(0.1) and estimate.ci_high == pytest.approx(0.1)


def test_a_ratio_over_a_non_positive_denominator_is_undefined_not_infinite():
    frame = pd.DataFrame({"seed": range(5), "narrow": [0.1] * 5, "general": [0.0, -0.01, 0.0, 0.01, -0.01]})
    estimate = cluster_bootstrap(frame, ratio_of_means("narrow", "general"), levels=("seed",))
    assert not estimate.defined
    assert verdict(estimate, ratio_above()) == INCONCLUSIVE


def test_a_ratio_well_above_the_margin_is_reproduced():
    frame = pd.DataFrame({"seed": range(5), "narrow": [0.3, 0.31, 0.29, 0.3, 0.32], "general": [0.1] * 5})
    estimate = cluster_bootstrap(frame, ratio_of_means("narrow", "general"), levels=("seed",))
    assert estimate.value == pytest.approx(3.04) and verdict(estimate, ratio_above()) == REPRODUCED


def test_a_bound_at_or_short_of_the_null_is_refused():
    with pytest.raises(ValueError, match="beyond the null"):
        Bound(0.0, 0.0, +1, "no margin")
    with pytest.raises(ValueError, match="beyond the null"):
        Bound(1.0, 0.9, +1, "wrong side")


def test_staying_within_the_margin_is_an_equivalence():
    stays = rate_stays(RateNoise(chat=0.02, sampled=False))
    near = study(0.001, 0.001, 5, 8, np.random.default_rng(6))
    far = study(0.2, 0.001, 5, 8, np.random.default_rng(7))
    assert verdict(cluster_bootstrap(near, mean_of("diff")), stays) == REPRODUCED
    assert verdict(cluster_bootstrap(far, mean_of("diff")), stays) == NOT_REPRODUCED


def test_rate_margins_follow_the_chat_rate_and_its_noise():
    assert rate_margin(RateNoise(0.0, sampled=True)) == (0.03, "floor 0.03")
    assert rate_margin(RateNoise(0.0, sampled=False)) == (0.01, "floor 0.01")
    value, basis = rate_margin(RateNoise(0.1, sampled=False))
    assert value == pytest.approx(0.05) and basis.startswith("0.5 x chat")
    noisy = RateNoise.from_interval(0.02, 0.0, 0.0784)  # a 95% interval 0.0784 wide: sd 0.02
    assert noisy.noise_sd == pytest.approx(0.02, rel=1e-3)
    assert rate_rise(noisy).bound == pytest.approx(0.06, rel=1e-3) and "3 sd" in rate_rise(noisy).basis


def test_combining_conditions_and_variants():
    assert combine([REPRODUCED, REPRODUCED]) == REPRODUCED
    assert combine([REPRODUCED, NOT_REPRODUCED]) == NOT_REPRODUCED
    assert combine([REPRODUCED, INCONCLUSIVE]) == INCONCLUSIVE
    assert any_of([NOT_REPRODUCED, REPRODUCED]) == REPRODUCED
    assert any_of([NOT_REPRODUCED, NOT_REPRODUCED]) == NOT_REPRODUCED
    assert any_of([NOT_REPRODUCED, INCONCLUSIVE]) == INCONCLUSIVE
    assert level_for(4) == pytest.approx(0.9875)
