"""Direction findings: ablating mean-diff directions beyond their random controls, steering
the chat model along them, and the SAE latent that tracks the persona."""

from __future__ import annotations

import pandas as pd

from experiments.findings.rows import Row, judged, no_estimate
from mech.verdicts.bootstrap import cluster_bootstrap, mean_of, ratio_of_means
from mech.verdicts.intervals import auroc_interval
from mech.verdicts.margins import (
    RateNoise,
    ablation_share,
    auroc_above,
    rate_rise,
)
from mech.verdicts.rule import any_of, level_for, verdict

# ---------------------------------------------------------------------------------------------
# Directions and SAE latents


def seed_records(results: dict) -> dict[str, dict]:
    """Each finetune seed's steering and ablation record (`by_seed`); an older run measured one
    seed, kept at the top of its results."""
    return results.get("by_seed") or {"0": results}


def ablation_cells(results: dict, metric: str) -> pd.DataFrame:
    """Per (seed, finetune, direction, random draw): the share of the finetune's lift over the
    seed's chat rate that ablating the direction removes beyond ablating the draw's random
    direction of equal norm."""
    cells = []
    for seed, record in seed_records(results).items():
        chat = record["chat"][metric]
        for finetune, row in record["ablation"][metric].items():
            lift = row["none"] - chat
            for direction, rate in row.items():
                if direction == "none" or direction.startswith("random:"):
                    continue
                for draw, random_rate in enumerate(_random_rates(row, direction)):
                    cells.append({"seed": seed, "finetune": finetune, "direction": direction,
                                  "own": direction == finetune, "pair": f"{finetune}|{direction}", "draw": draw,
                                  "lift": lift, "beyond_random": random_rate - rate})  # fmt: skip
    return pd.DataFrame(cells)


def _random_rates(row: dict, direction: str) -> list[float]:
    """The rates under each random draw of `direction` (`random:NAME#k`; an older run has one,
    `random:NAME`, which in newer runs is the draws' mean and not a draw)."""
    draws = [float(v) for k, v in row.items() if k.startswith(f"random:{direction}#")]
    return draws or [float(row[f"random:{direction}"])]


def direction_rows(results: dict, tidy: pd.DataFrame, source: str) -> list[Row]:  # noqa: ARG001
    metric = "p_bad_outside" if "p_bad_outside" in results["chat"] else "em_rate"
    cells = ablation_cells(results, metric)
    rows = []
    for own, whose in ((True, "its own"), (False, "another finetune's")):
        part = cells[cells["own"] == own] if len(cells) else cells
        if part.empty:
            continue
        # Seeds are the outer unit; the pairs inside a seed are resampled, its draws kept together.
        estimate = cluster_bootstrap(part, ratio_of_means("beyond_random", "lift"), levels=("seed", "pair"))
        measured = "; ".join(f"{p}: lift {g['lift'].mean():+.3f}, removed beyond random {g['beyond_random'].mean():+.3f}"
                             for p, g in part.groupby("pair", sort=False))  # fmt: skip
        if part["seed"].nunique() > 1:
            measured += f" (means over {part['seed'].nunique()} seeds)"
        rows.append(judged(f"directions: ablating {whose} mean-diff direction removes EM beyond a random one ({metric})",
                           "all", "share of the EM lift removed beyond random", estimate, ablation_share(), measured, source))  # fmt: skip
    rows += _induction(results, source)
    return rows


def _induction(results: dict, source: str) -> list[Row]:
    records = seed_records(results)
    chat = float(pd.Series([r["chat"]["em_rate"] for r in records.values()]).mean())
    cells = []
    for seed, record in records.items():
        steering = record["steering"]
        for direction, by_scale in steering.items():
            if direction.startswith("random:") or "#" in direction:
                continue
            for scale, rate in by_scale.items():
                randoms = _random_rates(
                    {k: v[scale] for k, v in steering.items() if k.startswith("random:")}, direction
                )
                cells += [{"seed": seed, "direction": direction, "scale": float(scale), "draw": i, "diff": rate - r}
                          for i, r in enumerate(randoms)]  # fmt: skip
    frame = pd.DataFrame(cells)
    scales = sorted(s for s in frame["scale"].unique() if s > 0) if len(frame) else []
    if not scales:
        return []
    bound, level = rate_rise(RateNoise(chat, sampled=True)), level_for(len(scales))
    tried = [(scale, cluster_bootstrap(frame[frame["scale"] == scale], mean_of("diff"), levels=("seed", "direction"),
                                       level=level)) for scale in scales]  # fmt: skip
    verdicts = [verdict(e, bound) for _, e in tried]
    best_scale, best = max(tried, key=lambda t: t[1].value)
    measured = "; ".join(f"x{s:g}: {e.value:+.3f} [{e.ci_low:.3f}, {e.ci_high:.3f}]" for s, e in tried)
    return [judged("directions: adding a mean-diff direction to the chat model induces EM (sampled; vs random)", "all",
                   f"EM rate over random at x{best_scale:g}", best, bound, measured + f" (chat {chat:.3f}; intervals at {level:.1%})",
                   source, verdict_=any_of(verdicts))]  # fmt: skip


def sae_rows(results: dict, tidy: pd.DataFrame, source: str) -> list[Row]:  # noqa: ARG001
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
