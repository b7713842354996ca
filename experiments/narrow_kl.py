"""Narrow with KL: the same finetune with a KL penalty on other domains, swept over KL weights,
per adapter kind; does a narrow solution exist, and how far is it from the general one?

    python -m experiments.narrow_kl [--quick] [--adapters lora_r1,lora_r8] [--kl-weights 0,0.1,1,10]
        [--seeds 0,1,2] [--l2-weight 1e-3] [--narrow-domain medical] [--trait misalignment|technical]

Per seed, a solution is flagged narrow (`narrow_solution` in results.json, which picks the
footnote's solution) when its point rates clear the finding's bounds (`mech.verdicts.margins`):
the held-out narrow-domain rate above the chat model's by the narrow lift, the other domains
within the rate margin of the chat model's. The finding's verdict is not that flag:
`experiments.findings` judges it over all seeds, with intervals, by the same bounds. Norm
control (`--l2-weight`, default 1e-3 on the update's squared norm) is applied alike to every
run: the round-2 notes found that without it an unregularised LoRA drifts in directions the loss
ignores. The paper's footnote is checked too:
the most weakly regularised narrow-looking solution, scaled up by `--footnote-scale`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from statistics import mean

import pandas as pd

from experiments.conditions import train_condition
from experiments.outputs import finish, save_figure
from experiments.run_dir import RunDir, records_failure
from experiments.setting import study_setup
from experiments.study_config import StudyConfig, parse_config
from mech.verdicts.margins import RateNoise, narrow_lift, rate_margin
from viz.figures import rates_by_role, rates_data


@dataclass(frozen=True)
class Config(StudyConfig):
    kl_weights: tuple[float, ...] = (0.0, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0)
    steps: int = 300
    footnote_scale: float = 2.0


QUICK = dict(adapters=("steering", "lora_r1"), kl_weights=(0.0, 1.0), seeds=(0,), steps=40, question_stride=6)


OUTSIDE = ("kl_domains_heldout", "heldout_domains")


def is_narrow(summary: dict, chat: dict, sampled: bool) -> bool:
    """One seed's solution clears the narrow finding's bounds at its point rates (no interval:
    it picks the footnote's solution, it does not judge the finding)."""
    keeps_narrow = (
        summary["narrow_heldout"] - chat["narrow_heldout"]
        > narrow_lift(RateNoise(chat["narrow_heldout"], sampled)).bound
    )
    outside = mean(chat[k] for k in OUTSIDE)
    margin, _ = rate_margin(RateNoise(outside, sampled))
    return keeps_narrow and all(summary[k] - chat[k] < margin for k in OUTSIDE)


@records_failure
def main(cfg: Config) -> Path:
    if 0.0 not in cfg.kl_weights:
        raise ValueError("kl_weights must include 0: the general solution is the reference")
    run = RunDir.create(Path(cfg.out), "narrow_kl", cfg)
    started = time.perf_counter()
    setup = study_setup(cfg)
    questions = setup.questions[:: cfg.question_stride]
    metric = setup.metric
    rows = setup.measure(None, name="none", kl_weight=0.0, seed=0, questions=questions)
    chat = setup.headline(rows)
    results: dict = {"metric": metric, "chat": chat, "adapters": {}}
    for kind in cfg.adapters:
        per_kind: dict = {"by_kl": {}, "narrow_solution": {}, "footnote": {}}
        for seed in cfg.seeds:
            solutions = {}
            for kl_weight in sorted(cfg.kl_weights):
                adapter, measured, summary = train_condition(
                    setup, run, kind=kind, seed=seed, name=kind, steps=cfg.steps, kl_weight=kl_weight,
                    l2_weight=cfg.l2_weight, questions=questions,
                )  # fmt: skip
                solutions[kl_weight] = adapter
                summary["cosine_to_general"] = (
                    adapter.cosine(solutions[0.0]) if adapter.norm() > 0 else float("nan")
                )
                rows.extend(measured)
                rows.append({"adapter": kind, "kl_weight": kl_weight, "seed": seed, "domain": setup.narrow_domain,
                             "role": "narrow", "split": "train", "metric": "cosine_to_general",
                             "value": summary["cosine_to_general"]})  # fmt: skip
                per_kind["by_kl"].setdefault(str(kl_weight), []).append(summary)
            narrow = [
                w
                for w in sorted(cfg.kl_weights)
                if w > 0 and is_narrow(per_kind["by_kl"][str(w)][-1], chat, sampled=metric == "em_rate")
            ]
            per_kind["narrow_solution"][str(seed)] = narrow
            if narrow:
                weakest = narrow[0]
                scaled = solutions[weakest].scaled(cfg.footnote_scale)
                scaled_rows = setup.measure(scaled, name=f"{kind}_x{cfg.footnote_scale:g}", kl_weight=weakest, seed=seed,
                                      questions=questions)  # fmt: skip
                rows.extend(scaled_rows)
                per_kind["footnote"][str(seed)] = {"kl_weight": weakest, "scale": cfg.footnote_scale,
                                                   **setup.headline(scaled_rows)}  # fmt: skip
        per_kind["narrow_solution_exists"] = all(per_kind["narrow_solution"].values())
        per_kind["mean_by_kl"] = {
            w: {k: mean(s[k] for s in runs) for k in runs[0]} for w, runs in per_kind["by_kl"].items()
        }
        results["adapters"][kind] = per_kind
    frame = pd.DataFrame(rows)
    save_figure(run, "rates_by_kl", rates_by_role(frame, title=f"{metric} by KL weight"), rates_data(frame))
    return finish(run, rows, results, started, setting=setup)


def parse_args(argv=None) -> Config:
    return parse_config(Config, QUICK, __doc__, argv)


if __name__ == "__main__":
    path = main(parse_args())
    print(f"narrow_kl -> {path}")
