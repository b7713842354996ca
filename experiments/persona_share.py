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

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from experiments.conditions import solution_pair
from experiments.outputs import finish, save_figure
from experiments.run_dir import RunDir, records_failure
from experiments.setting import refuse_model
from experiments.study_config import Trait, parse_config
from experiments.toy_setting import toy_setup
from mech.evaluation.loss_landscape import at_norm, noise_curve
from mech.toy.checkpoint import checkpoint_dir
from mech.training.cached_set import CachedChatSet
from viz.figures import share_data, share_plot


@dataclass(frozen=True)
class Config:
    organisms: tuple[str, ...] = ("default", "narrow02", "narrow05", "narrow10", "narrow15")
    narrow_domain: str = "medical"
    trait: Trait = "misalignment"
    adapters: tuple[str, ...] = ("steering", "lora_r1", "lora_r8")
    seeds: tuple[int, ...] = (0, 1)
    steps: int = 300
    train_size: int | None = None
    kl_size: int | None = None
    """Conversations of the narrow training set and of the KL set to use (seeded samples); None: all."""
    narrow_kl: float = 10.0
    l2_weight: float = 1e-3
    eps: float = 0.5
    noise_seeds: int = 10
    question_stride: int = 2
    out: str = "runs"
    model: str | None = None
    """Refused: the experiment compares organisms trained with different persona shares (toy only)."""


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


@records_failure
def main(cfg: Config) -> Path:
    refuse_model(cfg, "persona_share", "it compares toy organisms pre-trained with different persona shares")
    run = RunDir.create(Path(cfg.out), "persona_share", cfg)
    started = time.perf_counter()
    rows, results = [], {"organisms": {}}
    for organism in cfg.organisms:
        setup = toy_setup(
            organism,
            narrow_domain=cfg.narrow_domain,
            trait=cfg.trait,
            train_size=cfg.train_size,
            kl_size=cfg.kl_size,
        )
        questions = setup.questions[:: cfg.question_stride]
        # Each organism's chat model: the reference of the finding's margin.
        chat = setup.measure(None, name="none", kl_weight=0.0, seed=0, questions=questions)
        rows += [{**r, "adapter": f"{organism}/none"} for r in chat]
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
        results["organisms"][organism] = {"narrow_share": narrow_share(organism), "chat": setup.headline(chat),
                                          "adapters": per_kind}  # fmt: skip
    shares = {o: results["organisms"][o]["narrow_share"] for o in cfg.organisms}
    frame = pd.DataFrame(rows)
    frame["narrow_share"] = frame["adapter"].str.split("/").str[0].map(shares)
    save_figure(run, "by_share", share_plot(frame), share_data(frame))
    return finish(run, rows, results, started)


def parse_args(argv=None) -> Config:
    return parse_config(Config, QUICK, __doc__, argv)


if __name__ == "__main__":
    path = main(parse_args())
    print(f"persona_share -> {path}")
