"""Efficiency: is the general solution a lower-loss way to spend parameter norm?

    python -m experiments.efficiency [--quick] [--adapters lora_r1,lora_r8] [--narrow-kl 10] [--seeds 0,1,2]

For each adapter kind and seed, the general (KL = 0) and narrow (KL = `--narrow-kl`) solutions
(both under the same norm control) are scaled by factors 0..`max_scale`; their training loss on
the narrow set is recorded against effective norm. Reported: the optimal norm of each, the loss
of each at the smaller of the two norms (matched norm; the round-2 notes advise scaling down,
since multi-matrix LoRAs are not linear in the scale), and the norm each needs to reach the
worse of the two final losses (matched loss).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from statistics import mean

import numpy as np
import pandas as pd

from experiments.conditions import solution_pair
from experiments.outputs import curve_rows, finish, save_figure
from experiments.run_dir import RunDir, records_failure
from experiments.setting import study_setup
from experiments.study_config import PairConfig, parse_config
from mech.evaluation.loss_landscape import at_norm, scale_curve
from mech.training.cached_set import CachedChatSet
from viz import figures


@dataclass(frozen=True)
class Config(PairConfig):
    max_scale: float = 2.0
    n_scales: int = 41


QUICK = dict(adapters=("lora_r1",), seeds=(0,), steps=40, n_scales=11, question_stride=6)


def norm_to_reach(curve, loss: float) -> float:
    """Smallest norm on the curve whose loss is at most `loss` (nan if none)."""
    reached = curve[curve["loss"] <= loss + 1e-9]
    return float(reached["norm"].min()) if len(reached) else float("nan")


@records_failure
def main(cfg: Config) -> Path:
    run = RunDir.create(Path(cfg.out), "efficiency", cfg)
    started = time.perf_counter()
    setup = study_setup(cfg)
    questions = setup.questions[:: cfg.question_stride]
    scales = np.linspace(0.0, cfg.max_scale, cfg.n_scales).tolist()
    rows, results = [], {"adapters": {}}
    for kind in cfg.adapters:
        per_seed = []
        for seed in cfg.seeds:
            adapters, measured, summaries = solution_pair(setup, run, kind=kind, seed=seed, steps=cfg.steps,
                                                          narrow_kl=cfg.narrow_kl, l2_weight=cfg.l2_weight, from_run=cfg.from_run, questions=questions)  # fmt: skip
            rows += measured
            data = CachedChatSet.build(setup.model, setup.train, adapters["general"].entry(setup.model),
                                       batch_size=setup.batch_size, name="train", cache=setup.cache)  # fmt: skip
            curves = {}
            for label, weight in (("general", 0.0), ("narrow", cfg.narrow_kl)):
                curves[label] = scale_curve(setup.model, adapters[label], data, scales)
                for metric in ("loss", "norm"):
                    rows += curve_rows(curves[label], adapter=kind, kl_weight=weight, seed=seed, domain=setup.narrow_domain,
                                       x="scale", metric=metric)  # fmt: skip
            matched = min(adapters["general"].norm(), adapters["narrow"].norm())
            worse_loss = max(summaries["general"]["loss"], summaries["narrow"]["loss"])
            per_seed.append({
                "cosine": summaries["cosine"],
                "norm": {k: adapters[k].norm() for k in adapters},
                "final_loss": {k: summaries[k]["loss"] for k in adapters},
                "optimal_norm": {k: float(c.loc[c["loss"].idxmin(), "norm"]) for k, c in curves.items()},
                "optimal_loss": {k: float(c["loss"].min()) for k, c in curves.items()},
                "matched_norm": matched,
                "loss_at_matched_norm": {k: data.mean_cross_entropy(setup.model, at_norm(adapters[k], matched)) for k in adapters},
                "norm_for_matched_loss": {k: norm_to_reach(c, worse_loss) for k, c in curves.items()},
                "matched_loss": worse_loss,
                "chat_loss": data.mean_cross_entropy(setup.model, None),  # what either solution learned from
            })  # fmt: skip
        gap = [s["loss_at_matched_norm"]["narrow"] - s["loss_at_matched_norm"]["general"] for s in per_seed]
        results["adapters"][kind] = {
            "per_seed": per_seed,
            "loss_gap_at_matched_norm": gap,
            "general_more_efficient_in": sum(g > 0 for g in gap),
            "seeds": len(gap),
            "mean_gap": mean(gap),
        }
    frame = pd.DataFrame(rows)
    points = frame[frame["scale"].notna() & frame["metric"].isin(["loss", "norm"])]
    wide = points.pivot_table(
        index=["adapter", "kl_weight", "seed", "scale"], columns="metric", values="value"
    ).reset_index()
    wide = (
        wide.rename(columns={"norm": "effective_norm"})
        .assign(metric="loss")
        .rename(columns={"loss": "value"})
    )
    save_figure(
        run,
        "loss_vs_norm",
        figures.curves(wide, x="effective_norm", metric="loss", title="training loss of scaled solutions",
                       xlabel="effective norm", mark_minimum=True),
        figures.curve_data(wide, metric="loss"),
    )  # fmt: skip
    return finish(run, rows, results, started, setting=setup)


def parse_args(argv=None) -> Config:
    return parse_config(Config, QUICK, __doc__, argv)


if __name__ == "__main__":
    path = main(parse_args())
    print(f"efficiency -> {path}")
