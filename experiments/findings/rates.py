"""Findings on trait rates: emergence, the narrow solution, persona share (the toy's exact
candidate-set probabilities, or a real model's judged rates), each paired with the chat model
per (seed, domain)."""

from __future__ import annotations

import math
from statistics import mean

import numpy as np
import pandas as pd

from experiments.findings.rows import Row, judged, no_estimate
from mech.verdicts.bootstrap import Estimate, cluster_bootstrap, mean_of
from mech.verdicts.margins import (
    RateNoise,
    narrow_lift,
    rate_fall,
    rate_rise,
    rate_stays,
)
from mech.verdicts.rule import Bound, any_of, combine, level_for, verdict

# ---------------------------------------------------------------------------------------------
# Trait rates: the toy's exact candidate-set probabilities, or a real model's judged rates


def trait_cells(tidy: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The rows the headline rates average, one per (adapter, kl_weight, seed, domain): the narrow
    domain's held-out topics, the KL domains' held-out topics, the other domains whole (toy); or
    each domain's judged rate (first judge; the narrow metric on the narrow domain when judged)."""
    frame = tidy
    if "judge" in frame.columns and frame["judge"].notna().any():
        frame = frame[frame["judge"] == frame["judge"].dropna().iloc[0]]
    if metric == "em_rate":
        narrow_metric = "narrow_rate" if (frame["metric"] == "narrow_rate").any() else "em_rate"
        keep = ((frame["role"] == "narrow") & (frame["metric"] == narrow_metric)) | (
            frame["role"].isin(["kl", "heldout_domain"]) & (frame["metric"] == "em_rate")
        )
    else:
        split = np.where(frame["role"] == "heldout_domain", "all", "heldout")
        keep = (frame["metric"] == metric) & (frame["split"] == split)
    columns = ["adapter", "kl_weight", "seed", "domain", "role", "value"]
    extra = [c for c in ("ci_low", "ci_high") if c in frame.columns]
    return frame.loc[keep, columns + extra].reset_index(drop=True)


def chat_noise(chat: pd.DataFrame, sampled: bool) -> RateNoise:
    """The chat model's mean rate over `chat`'s domains and, when sampled, the sd of that mean's
    evaluation noise (each domain's from its bootstrap interval)."""
    if not sampled or "ci_low" not in chat.columns:
        return RateNoise(float(chat["value"].mean()), sampled)
    sds = [
        RateNoise.from_interval(0.0, float(lo), float(hi)).noise_sd
        for lo, hi in zip(chat["ci_low"], chat["ci_high"], strict=True)
    ]
    return RateNoise(float(chat["value"].mean()), True, math.sqrt(sum(s * s for s in sds)) / len(sds))


def lifts(cells: pd.DataFrame, adapter: str, kl_weight: float, roles: list[str]) -> pd.DataFrame:
    """Per (seed, domain) of `roles`: the rate under `adapter` at `kl_weight` minus the chat
    model's on the same domain (`diff`), the pairing every rate interval uses."""
    chat = cells[(cells["adapter"] == "none") & cells["role"].isin(roles)][["domain", "value"]]
    runs = cells[
        (cells["adapter"] == adapter) & (cells["kl_weight"] == kl_weight) & cells["role"].isin(roles)
    ]
    paired = runs.merge(chat.rename(columns={"value": "chat"}), on="domain", how="inner")
    return paired.assign(diff=paired["value"] - paired["chat"])


OUTSIDE = ["kl", "heldout_domain"]


def rise_by_role(paired: pd.DataFrame) -> str:
    """The mean rise over chat in the KL domains and in the held-out domains, as text."""
    by_role = paired.groupby("role")["diff"].mean()
    return (f"rise over chat: KL domains {by_role.get('kl', float('nan')):+.3f}, "
            f"held-out domains {by_role.get('heldout_domain', float('nan')):+.3f}")  # fmt: skip


def narrow_solution(
    cells: pd.DataFrame, adapter: str, kl_weight: float, keeps: Bound, outside: Bound, level: float = 0.95
) -> tuple[Estimate, Estimate, str]:
    """The narrow rule for one condition: its narrow-domain rise over chat, its rise outside, and
    the verdict that both hold (the narrow rise beyond `keeps`, the outside one within `outside`)."""
    narrow = cluster_bootstrap(lifts(cells, adapter, kl_weight, ["narrow"]), mean_of("diff"), level=level)
    spread = cluster_bootstrap(lifts(cells, adapter, kl_weight, OUTSIDE), mean_of("diff"), level=level)
    return narrow, spread, combine([verdict(narrow, keeps), verdict(spread, outside)])


def emergence_rows(results: dict, tidy: pd.DataFrame, source: str) -> list[Row]:
    metric, cells = results["metric"], trait_cells(tidy, results["metric"])
    sampled = metric == "em_rate"
    noise = chat_noise(cells[(cells["adapter"] == "none") & cells["role"].isin(OUTSIDE)], sampled)
    rows = []
    for kind in results["adapters"]:
        paired = lifts(cells, kind, 0.0, OUTSIDE)
        if paired.empty:
            continue
        estimate = cluster_bootstrap(paired, mean_of("diff"))
        measured = f"{rise_by_role(paired)} (chat {noise.chat:.3f})"
        rows.append(judged("EM: a narrow finetune (no KL) raises the trait outside its domain", kind,
                           f"{metric} rise outside the narrow domain", estimate, rate_rise(noise), measured, source))  # fmt: skip
    return rows + baseline_rows(results, cells, noise, source)


def baseline_rows(results: dict, cells: pd.DataFrame, noise: RateNoise, source: str) -> list[Row]:
    """The EM papers' baselines, one row per condition: the narrow data diluted with good answers
    from other domains (the paper: EM down to 1 part bad in 6, neither rate learned below) and few
    unique examples; each judged as EM is, with its narrow rise and whether it is a narrow
    solution by the narrow rule (the paper: mixing does not isolate one)."""
    kind = results.get("baseline_adapter")
    if kind is None:
        return []  # a run from before the baselines were run at every seed
    sampled = results["metric"] == "em_rate"
    chat = cells[cells["adapter"] == "none"]
    keeps = narrow_lift(chat_noise(chat[chat["role"] == "narrow"], sampled))
    conditions = [(f"(baseline) EM with {label.split(':')[1]} good answer{'' if label == '1:1' else 's'} "
                   "from other domains per narrow one", entry["adapter"]) for label, entry in results["mixing"].items()]  # fmt: skip
    conditions += [(f"(baseline) EM from {k} unique narrow examples", entry["adapter"])
                   for k, entry in results["few_samples"].items()]  # fmt: skip
    rows = []
    for finding, name in conditions:
        spread_cells = lifts(cells, name, 0.0, OUTSIDE)
        if spread_cells.empty or lifts(cells, name, 0.0, ["narrow"]).empty:
            continue
        narrow, spread, solution = narrow_solution(cells, name, 0.0, keeps, rate_stays(noise))
        measured = (f"{rise_by_role(spread_cells)}, narrow {narrow.value:+.3f} [{narrow.ci_low:.3f}, {narrow.ci_high:.3f}] "
                    f"(bound {keeps.text()}); a narrow solution by the narrow rule: {solution} (chat {noise.chat:.3f})")  # fmt: skip
        note = f"narrow rise {narrow.value:.3g}; a narrow solution: {solution}"
        rows.append(judged(finding, kind, f"{results['metric']} rise outside the narrow domain", spread,
                           rate_rise(noise), measured, source, note=note))  # fmt: skip
    return rows


def narrow_rows(results: dict, tidy: pd.DataFrame, source: str) -> list[Row]:
    metric, cells = results["metric"], trait_cells(tidy, results["metric"])
    sampled = metric == "em_rate"
    chat = cells[cells["adapter"] == "none"]
    outside = rate_stays(chat_noise(chat[chat["role"].isin(OUTSIDE)], sampled))
    keeps = narrow_lift(chat_noise(chat[chat["role"] == "narrow"], sampled))
    rows = []
    for kind, per_kind in results["adapters"].items():
        weights = sorted(float(w) for w in per_kind["by_kl"] if float(w) > 0)
        level = level_for(len(weights))  # one family: a narrow solution at *some* KL weight
        tried, parts = [], []
        for weight in weights:
            narrow, spread, solution = narrow_solution(cells, kind, weight, keeps, outside, level=level)
            tried.append((weight, narrow, spread, solution))
            parts.append(f"KL {weight:g}: narrow {narrow.value:+.3f} [{narrow.ci_low:.3f}, {narrow.ci_high:.3f}], "
                         f"outside {spread.value:+.3f} [{spread.ci_low:.3f}, {spread.ci_high:.3f}]")  # fmt: skip
        if not tried:
            continue
        rank = {"reproduced": 0, "inconclusive": 1, "not reproduced": 2}  # the row shows the best weight
        best = min(tried, key=lambda t: rank[t[3]])
        measured = "; ".join(parts) + f" (over chat; narrow bound {keeps.text()}; intervals at {level:.1%})"
        note = f"at KL {best[0]:g}, narrow rise {best[1].value:.3g} [{best[1].ci_low:.3g}, {best[1].ci_high:.3g}] vs {keeps.text()}"
        rows.append(judged("a narrow solution exists under KL (narrow rate far above chat, no rise outside)", kind,
                           f"{metric} rise outside at the best KL weight", best[2], outside, measured, source,
                           verdict_=any_of([t[3] for t in tried]), note=note))  # fmt: skip
    return rows


def persona_rows(results: dict, tidy: pd.DataFrame, source: str) -> list[Row]:
    organisms = sorted(results["organisms"].items(), key=lambda o: o[1]["narrow_share"])
    (low_name, low), (high_name, high) = organisms[0], organisms[-1]
    metric = "p_bad" if (tidy["metric"] == "p_bad").any() else "p_technical"
    cells = trait_cells(tidy, metric)
    cells = cells[(cells["kl_weight"] == 0) & cells["role"].isin(OUTSIDE)]
    rows = []
    for kind in low["adapters"]:
        pair = [
            cells[cells["adapter"] == f"{name}/{kind}"][["seed", "domain", "value"]]
            for name in (low_name, high_name)
        ]
        paired = pair[0].merge(pair[1], on=["seed", "domain"], suffixes=("_low", "_high"))
        paired = paired.assign(diff=paired["value_high"] - paired["value_low"])
        estimate = (
            cluster_bootstrap(paired, mean_of("diff")) if len(paired) else no_estimate("no paired cells")
        )
        by_share = [(o["narrow_share"], mean(s["general"]["kl_domains_heldout"] for s in o["adapters"][kind]))
                    for _, o in organisms]  # fmt: skip
        measured = ", ".join(f"{s:.0%}: {e:.3f}" for s, e in by_share) + " (KL-domain rate, general solution)"
        # The low share's chat model is the reference (an older run has none: the floor alone).
        reference = cells[cells["adapter"] == f"{low_name}/none"]
        noise = chat_noise(reference, sampled=False) if len(reference) else RateNoise(0.0, sampled=False)
        bound = rate_fall(noise)
        rows.append(judged(f"(beyond the paper) more narrowly-bad personas in pre-training -> less EM "
                           f"({high['narrow_share']:.0%} vs {low['narrow_share']:.0%})", kind,
                           "rate change outside the narrow domain", estimate, bound, measured, source))  # fmt: skip
    return rows
