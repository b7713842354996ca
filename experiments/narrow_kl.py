"""Narrow with KL: the same finetune with a KL penalty on other domains, swept over KL weights,
per adapter kind; does a narrow solution exist, and how far is it from the general one?

    python -m experiments.narrow_kl [--quick] [--adapters lora_r1,lora_r8] [--kl-weights 0,0.1,1,10]
        [--seeds 0,1,2] [--l2-weight 1e-3] [--narrow-domain medical] [--trait misalignment|technical]

A solution counts as narrow when its held-out narrow-domain rate is at least 0.8x the general
(KL = 0) solution's and both the KL domains' held-out topics and the domains outside the KL set
stay within 0.02 of the chat model. Norm control (`--l2-weight`, default 1e-3 on the update's
squared norm) is applied alike to every run: the round-2 notes found that without it an
unregularised LoRA drifts in directions the loss ignores. The paper's footnote is checked too:
the most weakly regularised narrow-looking solution, scaled up by `--footnote-scale`.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, replace
from pathlib import Path
from statistics import mean

from experiments.common import (
    ADAPTER_KINDS,
    Trait,
    headline,
    measure,
    toy_setup,
    train_condition,
    trait_metric,
    write_rows,
)
from experiments.run_dir import RunDir


@dataclass(frozen=True)
class Config:
    organism: str = "default"
    narrow_domain: str = "medical"
    trait: Trait = "misalignment"
    adapters: tuple[str, ...] = ("steering", "lora_r1", "lora_r8", "lora_r32")
    kl_weights: tuple[float, ...] = (0.0, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0)
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 300
    l2_weight: float = 1e-3
    footnote_scale: float = 2.0
    narrow_ratio: float = 0.8
    em_tolerance: float = 0.02
    question_stride: int = 1
    out: str = "runs"


QUICK = dict(adapters=("steering", "lora_r1"), kl_weights=(0.0, 1.0), seeds=(0,), steps=40, question_stride=6)


def is_narrow(summary: dict, general: dict, chat: dict, cfg: Config) -> bool:
    keeps_narrow = summary["narrow_heldout"] >= cfg.narrow_ratio * general["narrow_heldout"]
    no_em = all(summary[k] <= chat[k] + cfg.em_tolerance for k in ("kl_domains_heldout", "heldout_domains"))
    return keeps_narrow and no_em


def main(cfg: Config) -> Path:
    if 0.0 not in cfg.kl_weights:
        raise ValueError("kl_weights must include 0: the general solution is the reference")
    run = RunDir.create(Path(cfg.out), "narrow_kl", cfg)
    started = time.perf_counter()
    setup = toy_setup(cfg.organism, narrow_domain=cfg.narrow_domain, trait=cfg.trait)
    questions = setup.questions[:: cfg.question_stride]
    metric = trait_metric(cfg.trait)
    rows = measure(setup, None, name="none", kl_weight=0.0, seed=0, questions=questions)
    chat = headline(rows, metric)
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
            general = per_kind["by_kl"]["0.0"][-1]
            narrow = [
                w
                for w in sorted(cfg.kl_weights)
                if w > 0 and is_narrow(per_kind["by_kl"][str(w)][-1], general, chat, cfg)
            ]
            per_kind["narrow_solution"][str(seed)] = narrow
            if narrow:
                weakest = narrow[0]
                scaled = solutions[weakest].scaled(cfg.footnote_scale)
                scaled_rows = measure(setup, scaled, name=f"{kind}_x{cfg.footnote_scale:g}", kl_weight=weakest, seed=seed,
                                      questions=questions)  # fmt: skip
                rows.extend(scaled_rows)
                per_kind["footnote"][str(seed)] = {"kl_weight": weakest, "scale": cfg.footnote_scale,
                                                   **headline(scaled_rows, metric)}  # fmt: skip
        per_kind["narrow_solution_exists"] = all(per_kind["narrow_solution"].values())
        per_kind["mean_by_kl"] = {
            w: {k: mean(s[k] for s in runs) for k in runs[0]} for w, runs in per_kind["by_kl"].items()
        }
        results["adapters"][kind] = per_kind
    results["seconds"] = time.perf_counter() - started
    write_rows(run, rows)
    run.save_results(results)
    run.set_status("done")
    return run.path


def parse_args(argv=None) -> Config:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a reduced run (<= 60 s), for tests")
    parser.add_argument("--organism", default=Config.organism)
    parser.add_argument("--narrow-domain", default=Config.narrow_domain)
    parser.add_argument("--trait", choices=("misalignment", "technical"), default=Config.trait)
    parser.add_argument("--adapters", help=f"comma-separated kinds from {ADAPTER_KINDS}")
    parser.add_argument("--kl-weights", help="comma-separated, must include 0")
    parser.add_argument("--seeds", help="comma-separated seeds")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--l2-weight", type=float)
    parser.add_argument("--out", default=Config.out)
    args = parser.parse_args(argv)
    cfg = Config(organism=args.organism, narrow_domain=args.narrow_domain, trait=args.trait, out=args.out)
    if args.quick:
        cfg = replace(cfg, **QUICK)
    overrides = {
        "adapters": tuple(args.adapters.split(",")) if args.adapters else None,
        "kl_weights": tuple(float(w) for w in args.kl_weights.split(",")) if args.kl_weights else None,
        "seeds": tuple(int(s) for s in args.seeds.split(",")) if args.seeds else None,
        "steps": args.steps, "l2_weight": args.l2_weight,
    }  # fmt: skip
    return replace(cfg, **{k: v for k, v in overrides.items() if v is not None})


if __name__ == "__main__":
    path = main(parse_args())
    print(f"narrow_kl -> {path}")
