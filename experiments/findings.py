"""The paper's findings, read from run folders, each judged by the one rule of `mech.verdicts`:
an effect, its 95% bootstrap interval over the units it was measured on (seeds x domains, seeds
x norms, seeds), the pre-set bound it must clear (`mech.verdicts.margins`), and the verdict.

Every number comes from a run's `results.json` and `results.csv`; nothing is typed in. A row:

    finding, adapter, effect (what the number is), value, ci_low, ci_high, unit, units, level,
    bound, verdict, measured (the numbers behind it, briefly), source (the run folder), and
    estimate (effect, interval, bound and unit as one line of text)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from statistics import mean

import numpy as np
import pandas as pd

from mech.verdicts.bootstrap import Estimate, cluster_bootstrap, mean_of, ratio_of_means
from mech.verdicts.intervals import auroc_interval
from mech.verdicts.margins import (
    RateNoise,
    ablation_share,
    auroc_above,
    cosine_rise,
    narrow_lift,
    rate_fall,
    rate_rise,
    rate_stays,
    ratio_above,
    relative_loss_gap,
)
from mech.verdicts.rule import INCONCLUSIVE, Bound, any_of, combine, describe_row, level_for, verdict

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


def _emergence(results: dict, tidy: pd.DataFrame, source: str) -> list[Row]:
    metric, cells = results["metric"], trait_cells(tidy, results["metric"])
    sampled = metric == "em_rate"
    noise = chat_noise(cells[(cells["adapter"] == "none") & cells["role"].isin(OUTSIDE)], sampled)
    rows = []
    for kind in results["adapters"]:
        paired = lifts(cells, kind, 0.0, OUTSIDE)
        if paired.empty:
            continue
        estimate = cluster_bootstrap(paired, mean_of("diff"))
        by_role = paired.groupby("role")["diff"].mean()
        measured = (f"rise over chat: KL domains {by_role.get('kl', float('nan')):+.3f}, held-out domains "
                    f"{by_role.get('heldout_domain', float('nan')):+.3f} (chat {noise.chat:.3f})")  # fmt: skip
        rows.append(judged("EM: a narrow finetune (no KL) raises the trait outside its domain", kind,
                           f"{metric} rise outside the narrow domain", estimate, rate_rise(noise), measured, source))  # fmt: skip
    return rows


def _narrow(results: dict, tidy: pd.DataFrame, source: str) -> list[Row]:
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
            narrow = cluster_bootstrap(lifts(cells, kind, weight, ["narrow"]), mean_of("diff"), level=level)
            spread = cluster_bootstrap(lifts(cells, kind, weight, OUTSIDE), mean_of("diff"), level=level)
            tried.append(
                (weight, narrow, spread, combine([verdict(narrow, keeps), verdict(spread, outside)]))
            )
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


# ---------------------------------------------------------------------------------------------
# Loss-landscape findings: per seed


def _efficiency(results: dict, tidy: pd.DataFrame, source: str) -> list[Row]:  # noqa: ARG001
    rows = []
    for kind, r in results["adapters"].items():
        per_seed = pd.DataFrame(
            [
                {
                    "seed": i,
                    "gap": s["loss_at_matched_norm"]["narrow"] - s["loss_at_matched_norm"]["general"],
                    "learned": s["chat_loss"] - s["loss_at_matched_norm"]["general"]
                    if "chat_loss" in s
                    else float("nan"),
                }
                for i, s in enumerate(r["per_seed"])
            ]  # fmt: skip
        )
        if per_seed["learned"].isna().any():
            estimate = no_estimate(f"{len(per_seed)} seed(s); no chat loss stored (an older run)")
        else:
            estimate = cluster_bootstrap(per_seed, ratio_of_means("gap", "learned"), levels=("seed",))
        measured = f"narrow - general loss at matched norm {per_seed['gap'].mean():+.4f} nats ({len(per_seed)} seeds)"
        rows.append(judged("efficiency: general has lower loss at matched norm", kind,
                           "loss gap / loss learned", estimate, relative_loss_gap(), measured, source))  # fmt: skip
    return rows


def _stability(results: dict, tidy: pd.DataFrame, source: str) -> list[Row]:  # noqa: ARG001
    rows = []
    for kind, r in results["adapters"].items():
        eps = f"{r['eps_compared']}"
        per_seed = pd.DataFrame([{"seed": i, "narrow": s["mean_delta"]["narrow"][_key(s["mean_delta"]["narrow"], eps)],
                                  "general": s["mean_delta"]["general"][_key(s["mean_delta"]["general"], eps)]}
                                 for i, s in enumerate(r["per_seed"])])  # fmt: skip
        estimate = cluster_bootstrap(per_seed, ratio_of_means("narrow", "general"), levels=("seed",))
        measured = (f"loss rise at eps {r['eps_compared']:g}: narrow {per_seed['narrow'].mean():.4f}, "
                    f"general {per_seed['general'].mean():.4f}" +
                    ("; the general rise is not positive: the ratio is undefined" if per_seed["general"].mean() <= 0 else ""))  # fmt: skip
        rows.append(judged("stability: general loses less under orthogonal noise (matched norm)", kind,
                           "narrow / general loss rise", estimate, ratio_above(), measured, source))  # fmt: skip
    return rows


def _key(by_eps: dict, eps: str) -> str:
    """The key of `by_eps` for `eps` ("0.5" vs "0.50" across versions)."""
    return next(k for k in by_eps if float(k) == float(eps))


def _pretraining(results: dict, tidy: pd.DataFrame, source: str) -> list[Row]:  # noqa: ARG001
    rows = []
    for kind, r in results["adapters"].items():
        cells = pd.DataFrame([{"seed": i, "norm": norm, **kls} for i, s in enumerate(r["per_seed"])
                              for norm, kls in s["kl_by_norm"].items()])  # fmt: skip
        over_narrow = cluster_bootstrap(cells, ratio_of_means("general", "narrow"), levels=("seed", "norm"))
        if "random" in cells.columns:
            over_random = cluster_bootstrap(
                cells, ratio_of_means("narrow", "random"), levels=("seed", "norm")
            )
            control = verdict(over_random, ratio_above())
            tail = f"narrow / random {over_random.value:.3g} [{over_random.ci_low:.3g}, {over_random.ci_high:.3g}]"
        else:
            control, tail = INCONCLUSIVE, "no equal-norm random control stored"
        measured = (f"KL on pre-training text, mean over norms: general {cells['general'].mean():.3g}, "
                    f"narrow {cells['narrow'].mean():.3g}; " + tail)  # fmt: skip
        rows.append(judged("pre-training significance: the general direction changes pre-training text more (and both more than random)",
                           kind, "general / narrow KL", over_narrow, ratio_above(), measured, source,
                           verdict_=combine([verdict(over_narrow, ratio_above()), control]), note=f"{tail} ({control})"))  # fmt: skip
    return rows


def _revert(results: dict, tidy: pd.DataFrame, source: str) -> list[Row]:  # noqa: ARG001
    rows = []
    for kind, trajectories in results["adapters"].items():
        per_seed = []
        for name, trajectory in trajectories.items():
            direction, _, seed = name.partition("/")
            if direction != "remove_kl":
                continue
            with_kl = [p for p in trajectory if p["kl_weight"] != 0]
            before = with_kl[-1] if with_kl else trajectory[0]  # the last snapshot before the KL went
            control = trajectories.get(f"keep_kl/{seed}")
            kept = _cosine_change(control, before["step"]) if control else float("nan")
            per_seed.append({"seed": seed, "removed": trajectory[-1]["cosine_to_general"] - before["cosine_to_general"],
                             "kept": kept})  # fmt: skip
        if not per_seed:
            continue
        frame = pd.DataFrame(per_seed)
        if frame["kept"].isna().any():
            estimate = no_estimate(f"{len(frame)} seed(s); no KL-kept control in this run")
        else:
            estimate = cluster_bootstrap(
                frame.assign(diff=frame["removed"] - frame["kept"]), mean_of("diff"), levels=("seed",)
            )
        measured = (f"cosine to the general solution after the KL is removed {frame['removed'].mean():+.3f}, "
                    f"with it kept {frame['kept'].mean():+.3f} ({len(frame)} seeds)")  # fmt: skip
        rows.append(judged("revert: without KL, training drifts back to the general solution (vs KL kept)", kind,
                           "cosine rise, KL removed - KL kept", estimate, cosine_rise(), measured, source))  # fmt: skip
    return rows


def _cosine_change(trajectory: list[dict], from_step: int) -> float:
    at = [p for p in trajectory if p["step"] <= from_step]
    start = at[-1] if at else trajectory[0]
    return trajectory[-1]["cosine_to_general"] - start["cosine_to_general"]


def _persona(results: dict, tidy: pd.DataFrame, source: str) -> list[Row]:
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
        bound = rate_fall(RateNoise(0.0, sampled=False))
        rows.append(judged(f"(beyond the paper) more narrowly-bad personas in pre-training -> less EM "
                           f"({high['narrow_share']:.0%} vs {low['narrow_share']:.0%})", kind,
                           "rate change outside the narrow domain", estimate, bound, measured, source))  # fmt: skip
    return rows


# ---------------------------------------------------------------------------------------------
# Directions and SAE latents


def _ablation_cells(results: dict, metric: str) -> pd.DataFrame:
    """Per (finetune, direction, random draw): the share of the finetune's lift over chat that
    ablating the direction removes beyond ablating the draw's random direction of equal norm."""
    table, chat = results["ablation"][metric], results["chat"][metric]
    cells = []
    for finetune, row in table.items():
        lift = row["none"] - chat
        for direction, rate in row.items():
            if direction == "none" or direction.startswith("random:"):
                continue
            for draw, random_rate in enumerate(_random_rates(row, direction)):
                cells.append({"finetune": finetune, "direction": direction, "own": direction == finetune,
                              "pair": f"{finetune}|{direction}", "draw": draw, "lift": lift,
                              "beyond_random": random_rate - rate})  # fmt: skip
    return pd.DataFrame(cells)


def _random_rates(row: dict, direction: str) -> list[float]:
    """The rates under each random draw of `direction` (`random:NAME#k`; an older run has one,
    `random:NAME`, which in newer runs is the draws' mean and not a draw)."""
    draws = [float(v) for k, v in row.items() if k.startswith(f"random:{direction}#")]
    return draws or [float(row[f"random:{direction}"])]


def _directions(results: dict, tidy: pd.DataFrame, source: str) -> list[Row]:  # noqa: ARG001
    metric = "p_bad_outside" if "p_bad_outside" in results["chat"] else "em_rate"
    cells = _ablation_cells(results, metric)
    rows = []
    for own, whose in ((True, "its own"), (False, "another finetune's")):
        part = cells[cells["own"] == own] if len(cells) else cells
        if part.empty:
            continue
        estimate = cluster_bootstrap(part, ratio_of_means("beyond_random", "lift"), levels=("pair", "draw"))
        measured = "; ".join(f"{p}: lift {g['lift'].iloc[0]:+.3f}, removed beyond random {g['beyond_random'].mean():+.3f}"
                             for p, g in part.groupby("pair", sort=False))  # fmt: skip
        rows.append(judged(f"directions: ablating {whose} mean-diff direction removes EM beyond a random one ({metric})",
                           "all", "share of the EM lift removed beyond random", estimate, ablation_share(), measured, source))  # fmt: skip
    rows += _induction(results, source)
    return rows


def _induction(results: dict, source: str) -> list[Row]:
    chat = results["chat"]["em_rate"]
    cells = []
    for direction, by_scale in results["steering"].items():
        if direction.startswith("random:") or "#" in direction:
            continue
        for scale, rate in by_scale.items():
            randoms = _random_rates({k: v[scale] for k, v in results["steering"].items() if k.startswith("random:")},
                                    direction)  # fmt: skip
            cells += [{"direction": direction, "scale": float(scale), "draw": i, "diff": rate - r}
                      for i, r in enumerate(randoms)]  # fmt: skip
    frame = pd.DataFrame(cells)
    scales = sorted(s for s in frame["scale"].unique() if s > 0) if len(frame) else []
    if not scales:
        return []
    bound, level = rate_rise(RateNoise(chat, sampled=True)), level_for(len(scales))
    tried = [(scale, cluster_bootstrap(frame[frame["scale"] == scale], mean_of("diff"), levels=("direction", "draw"),
                                       level=level)) for scale in scales]  # fmt: skip
    verdicts = [verdict(e, bound) for _, e in tried]
    best_scale, best = max(tried, key=lambda t: t[1].value)
    measured = "; ".join(f"x{s:g}: {e.value:+.3f} [{e.ci_low:.3f}, {e.ci_high:.3f}]" for s, e in tried)
    return [judged("directions: adding a mean-diff direction to the chat model induces EM (sampled; vs random)", "all",
                   f"EM rate over random at x{best_scale:g}", best, bound, measured + f" (chat {chat:.3f}; intervals at {level:.1%})",
                   source, verdict_=any_of(verdicts))]  # fmt: skip


def _sae(results: dict, tidy: pd.DataFrame, source: str) -> list[Row]:  # noqa: ARG001
    persona = results["persona"]
    near = {name: d["top_by_cosine"][0] for name, d in results["directions"].items()}
    nearest = ", ".join(f"{n} {v['latent']} ({v['cosine']:.2f})" for n, v in near.items())
    if "best_latent" not in persona:  # a real model: no documents of known persona
        return []
    split = persona.get("split", {})
    if "best_latent_heldout_auroc" in persona and "heldout_malicious" in split:
        positive = split["heldout_malicious"]
        estimate = auroc_interval(persona["best_latent_heldout_auroc"], positive, split["heldout"] - positive)
        measured = (f"latent {persona['best_latent']}, chosen on {split['selection']} other documents (AUROC there "
                    f"{persona['best_latent_selection_auroc']:.3f})")  # fmt: skip
    else:  # an older run: scored on the documents it was chosen on
        estimate = no_estimate("the latent was scored on the documents it was chosen on")
        measured = f"latent {persona['best_latent']}: AUROC {persona.get('best_latent_auroc', float('nan')):.3f} on its selection documents"
    return [judged("(SAE) a single latent tracks the toy persona", "all", "held-out AUROC", estimate, auroc_above(),
                   f"{measured}; probe on the residual (held out) {persona['probe_auroc']:.3f}; nearest latents by cosine: {nearest}",
                   source)]  # fmt: skip


READERS: dict[str, Callable[[dict, pd.DataFrame, str], list[Row]]] = {
    "emergence": _emergence, "narrow_kl": _narrow, "efficiency": _efficiency, "stability": _stability,
    "revert": _revert, "pretraining_kl": _pretraining, "persona_share": _persona,
    "directions": _directions, "sae_compare": _sae,
}  # fmt: skip


def read_tidy(path: Path) -> pd.DataFrame:
    csv = Path(path) / "results.csv"
    return pd.read_csv(csv) if csv.is_file() else pd.DataFrame()
