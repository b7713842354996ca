"""Persona share (beyond the paper): does pre-training with more narrowly-bad personas make
emergent misalignment weaker, and the general solution's efficiency and stability edge smaller?

    python -m experiments.persona_share [--quick] [--organisms default,narrow02,narrow05,narrow10,narrow15]

The shipped organisms differ only in the share of narrowly-bad personas in pre-training (0, 2,
5, 10, 15 %). Each gets the same finetunes (general: KL = 0; narrow: KL = `--narrow-kl`, both
with norm control); reported per organism: the trait rates of the general solution (narrow
domain, KL domains, held-out domains), the efficiency gap (narrow minus general training loss at
matched norm) and the stability gap (narrow over general mean loss increase under orthogonal
noise at `--eps`, at matched norm).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

from experiments.common import ADAPTER_KINDS, Trait, solution_pair, toy_setup, write_rows
from experiments.run_dir import RunDir
from mech.analysis import at_norm, noise_curve
from mech.finetune import CachedChatSet
from mech.toy.checkpoint import checkpoint_dir


@dataclass(frozen=True)
class Config:
    organisms: tuple[str, ...] = ("default", "narrow02", "narrow05", "narrow10", "narrow15")
    narrow_domain: str = "medical"
    trait: Trait = "misalignment"
    adapters: tuple[str, ...] = ("steering", "lora_r1", "lora_r8")
    seeds: tuple[int, ...] = (0, 1)
    steps: int = 300
    narrow_kl: float = 10.0
    l2_weight: float = 1e-3
    eps: float = 0.5
    noise_seeds: int = 10
    question_stride: int = 2
    out: str = "runs"


QUICK = dict(
    organisms=("default", "narrow15"),
    adapters=("lora_r1",),
    seeds=(0,),
    steps=30,
    noise_seeds=2,
    question_stride=12,
)


def narrow_share(organism: str) -> float:
    return float(
        json.loads((checkpoint_dir(organism) / "organism.json").read_text())["world"]["narrow_share"]
    )


def main(cfg: Config) -> Path:
    run = RunDir.create(Path(cfg.out), "persona_share", cfg)
    started = time.perf_counter()
    rows, results = [], {"organisms": {}}
    for organism in cfg.organisms:
        setup = toy_setup(organism, narrow_domain=cfg.narrow_domain, trait=cfg.trait)
        questions = setup.questions[:: cfg.question_stride]
        per_kind = {}
        for kind in cfg.adapters:
            per_seed = []
            for seed in cfg.seeds:
                adapters, measured, summaries = solution_pair(setup, run, kind=kind, seed=seed, steps=cfg.steps,
                                                              narrow_kl=cfg.narrow_kl, l2_weight=cfg.l2_weight, questions=questions)  # fmt: skip
                rows += [{**r, "adapter": f"{organism}/{r['adapter']}"} for r in measured]
                data = CachedChatSet.build(
                    setup.model,
                    setup.train,
                    adapters["general"].entry(setup.model),
                    batch_size=None,
                    name="train",
                )
                matched = min(a.norm() for a in adapters.values())
                scaled = {k: at_norm(a, matched) for k, a in adapters.items()}
                loss = {k: data.mean_cross_entropy(setup.model, a) for k, a in scaled.items()}
                delta = {k: float(noise_curve(setup.model, a, data, [cfg.eps], seeds=range(cfg.noise_seeds))["delta"].mean())
                         for k, a in scaled.items()}  # fmt: skip
                per_seed.append({
                    "general": {k: summaries["general"][k] for k in ("narrow_heldout", "kl_domains_heldout", "heldout_domains")},
                    "narrow": {k: summaries["narrow"][k] for k in ("narrow_heldout", "kl_domains_heldout", "heldout_domains")},
                    "efficiency_gap": loss["narrow"] - loss["general"],
                    "stability_ratio": delta["narrow"] / delta["general"] if delta["general"] > 0 else float("inf"),
                    "cosine": summaries["cosine"],
                })  # fmt: skip
                for metric in ("efficiency_gap", "stability_ratio"):
                    rows.append({"adapter": f"{organism}/{kind}", "kl_weight": cfg.narrow_kl, "seed": seed, "domain": setup.narrow_domain,
                                 "role": "narrow", "split": "train", "metric": metric, "value": per_seed[-1][metric]})  # fmt: skip
            per_kind[kind] = per_seed
        results["organisms"][organism] = {"narrow_share": narrow_share(organism), "adapters": per_kind}
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
    parser.add_argument("--organisms", help="comma-separated shipped organisms")
    parser.add_argument("--narrow-domain", default=Config.narrow_domain)
    parser.add_argument("--trait", choices=("misalignment", "technical"), default=Config.trait)
    parser.add_argument("--adapters", help=f"comma-separated kinds from {ADAPTER_KINDS}")
    parser.add_argument("--seeds", help="comma-separated seeds")
    parser.add_argument("--out", default=Config.out)
    args = parser.parse_args(argv)
    cfg = Config(narrow_domain=args.narrow_domain, trait=args.trait, out=args.out)
    if args.quick:
        cfg = replace(cfg, **QUICK)
    overrides = {
        "organisms": tuple(args.organisms.split(",")) if args.organisms else None,
        "adapters": tuple(args.adapters.split(",")) if args.adapters else None,
        "seeds": tuple(int(s) for s in args.seeds.split(",")) if args.seeds else None,
    }  # fmt: skip
    return replace(cfg, **{k: v for k, v in overrides.items() if v is not None})


if __name__ == "__main__":
    path = main(parse_args())
    print(f"persona_share -> {path}")
