"""Stability: does the general solution's loss rise less under orthogonal noise?

    python -m experiments.stability [--quick] [--adapters lora_r1,lora_r8] [--narrow-kl 10] [--noise-seeds 10]

For each adapter kind and seed, the general (KL = 0) and narrow solutions are compared at matched
norm (both rescaled to the smaller of their norms). Each is perturbed as x' = sqrt(1-eps^2) x +
eps y on its noise units (per vector; per LoRA factor matrix) for eps in [0, 1] and >= 10 noise
seeds; reported: the absolute loss increase and the relative one, (L_eps - L_0) / (L_chat - L_0),
the share of the finetune's gain that the noise undoes (the authors' R, without their x100).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, replace
from pathlib import Path

from experiments.common import ADAPTER_KINDS, Trait, curve_rows, solution_pair, toy_setup, write_rows
from experiments.run_dir import RunDir
from mech.analysis import at_norm, noise_curve
from mech.finetune import CachedChatSet


@dataclass(frozen=True)
class Config:
    organism: str = "default"
    narrow_domain: str = "medical"
    trait: Trait = "misalignment"
    adapters: tuple[str, ...] = ("steering", "lora_r1", "lora_r8", "lora_r32")
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 300
    narrow_kl: float = 10.0
    l2_weight: float = 1e-3
    eps_values: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    noise_seeds: int = 10
    question_stride: int = 1
    out: str = "runs"


QUICK = dict(
    adapters=("lora_r1",),
    seeds=(0,),
    steps=40,
    eps_values=(0.0, 0.3, 0.6, 1.0),
    noise_seeds=3,
    question_stride=6,
)


def main(cfg: Config) -> Path:
    run = RunDir.create(Path(cfg.out), "stability", cfg)
    started = time.perf_counter()
    setup = toy_setup(cfg.organism, narrow_domain=cfg.narrow_domain, trait=cfg.trait)
    questions = setup.questions[:: cfg.question_stride]
    rows, results = [], {"adapters": {}}
    for kind in cfg.adapters:
        per_seed = []
        for seed in cfg.seeds:
            adapters, measured, summaries = solution_pair(setup, run, kind=kind, seed=seed, steps=cfg.steps,
                                                          narrow_kl=cfg.narrow_kl, l2_weight=cfg.l2_weight, questions=questions)  # fmt: skip
            rows += measured
            data = CachedChatSet.build(
                setup.model,
                setup.train,
                adapters["general"].entry(setup.model),
                batch_size=None,
                name="train",
            )
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
    parser.add_argument("--seeds", help="comma-separated seeds")
    parser.add_argument("--narrow-kl", type=float)
    parser.add_argument("--noise-seeds", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--l2-weight", type=float)
    parser.add_argument("--out", default=Config.out)
    args = parser.parse_args(argv)
    cfg = Config(organism=args.organism, narrow_domain=args.narrow_domain, trait=args.trait, out=args.out)
    if args.quick:
        cfg = replace(cfg, **QUICK)
    overrides = {
        "adapters": tuple(args.adapters.split(",")) if args.adapters else None,
        "seeds": tuple(int(s) for s in args.seeds.split(",")) if args.seeds else None,
        "narrow_kl": args.narrow_kl, "noise_seeds": args.noise_seeds, "steps": args.steps, "l2_weight": args.l2_weight,
    }  # fmt: skip
    return replace(cfg, **{k: v for k, v in overrides.items() if v is not None})


if __name__ == "__main__":
    path = main(parse_args())
    print(f"stability -> {path}")
