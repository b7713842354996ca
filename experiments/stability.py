"""Stability: does the general solution's loss rise less under orthogonal noise?

    python -m experiments.stability [--quick] [--adapters lora_r1,lora_r8] [--narrow-kl 10] [--noise-seeds 10]

For each adapter kind and seed, the general (KL = 0) and narrow solutions are compared at matched
norm (both rescaled to the smaller of their norms). Each is perturbed as x' = sqrt(1-eps^2) x +
eps y on its noise units (per vector; per LoRA factor matrix) for eps in [0, 1] and >= 10 noise
seeds; reported: the absolute loss increase and the relative one, (L_eps - L_0) / (L_chat - L_0),
the share of the finetune's gain that the noise undoes (the authors' R, without their x100).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from experiments.conditions import solution_pair
from experiments.outputs import curve_rows, finish, save_figure
from experiments.run_dir import RunDir, records_failure
from experiments.setting import study_setup
from experiments.study_config import PairConfig, parse_config
from mech.evaluation.loss_landscape import at_norm, noise_curve
from mech.training.cached_set import CachedChatSet
from viz.figures import curve_data, curves


@dataclass(frozen=True)
class Config(PairConfig):
    eps_values: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    noise_seeds: int = 10


QUICK = dict(
    adapters=("lora_r1",),
    seeds=(0,),
    steps=40,
    eps_values=(0.0, 0.3, 0.6, 1.0),
    noise_seeds=3,
    question_stride=6,
)


@records_failure
def main(cfg: Config) -> Path:
    run = RunDir.create(Path(cfg.out), "stability", cfg)
    started = time.perf_counter()
    setup = study_setup(cfg)
    questions = setup.questions[:: cfg.question_stride]
    rows, results = [], {"adapters": {}}
    for kind in cfg.adapters:
        per_seed = []
        for seed in cfg.seeds:
            adapters, measured, summaries = solution_pair(setup, run, kind=kind, seed=seed, steps=cfg.steps,
                                                          narrow_kl=cfg.narrow_kl, l2_weight=cfg.l2_weight, from_run=cfg.from_run, questions=questions)  # fmt: skip
            rows += measured
            data = CachedChatSet.build(setup.model, setup.train, adapters["general"].entry(setup.model),
                                       batch_size=setup.batch_size, name="train", cache=setup.cache)  # fmt: skip
            chat_loss = data.mean_cross_entropy(setup.model, None)
            matched = min(adapters["general"].norm(), adapters["narrow"].norm())
            summary = {
                "matched_norm": matched,
                "cosine": summaries["cosine"],
                "chat_loss": chat_loss,
                "mean_delta": {},
                "mean_relative": {},
            }
            for label, weight in (("general", 0.0), ("narrow", cfg.narrow_kl)):
                adapter = at_norm(adapters[label], matched)
                curve = noise_curve(setup.model, adapter, data, cfg.eps_values, seeds=range(cfg.noise_seeds))
                base = data.mean_cross_entropy(setup.model, adapter)
                curve["relative"] = curve["delta"] / (chat_loss - base)
                for metric in ("loss", "delta", "relative"):
                    rows += curve_rows(
                        curve,
                        adapter=kind,
                        kl_weight=weight,
                        seed=seed,
                        domain=setup.narrow_domain,
                        x="eps",
                        metric=metric,
                    )
                by_eps = curve.groupby("eps")
                summary["mean_delta"][label] = {str(e): float(v) for e, v in by_eps["delta"].mean().items()}
                summary["mean_relative"][label] = {
                    str(e): float(v) for e, v in by_eps["relative"].mean().items()
                }
            per_seed.append(summary)
        mid = str(sorted(cfg.eps_values)[len(cfg.eps_values) // 2])
        ratios = [
            s["mean_delta"]["narrow"][mid] / s["mean_delta"]["general"][mid]
            if s["mean_delta"]["general"][mid] > 0
            else float("inf")
            for s in per_seed
        ]
        results["adapters"][kind] = {"per_seed": per_seed, "eps_compared": float(mid), "narrow_over_general_delta": ratios,
                                     "general_more_stable_in": sum(r > 1 for r in ratios), "seeds": len(ratios)}  # fmt: skip
    frame = pd.DataFrame(rows)
    save_figure(
        run,
        "noise",
        curves(frame, x="eps", metric="relative", errorbar="sd", ylabel="relative loss increase",
               title="orthogonal noise at matched norm: loss increase / finetuning gain (mean ± sd)"),
        curve_data(frame, metric="relative"),
    )  # fmt: skip
    return finish(run, rows, results, started, setting=setup)


def parse_args(argv=None) -> Config:
    return parse_config(Config, QUICK, __doc__, argv)


if __name__ == "__main__":
    path = main(parse_args())
    print(f"stability -> {path}")
