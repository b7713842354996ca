"""Reversion: train a narrow solution (with KL), then keep training without the KL term; does it
drift back to the general solution? And the reverse: add the KL term to a general solution.

    python -m experiments.revert [--quick] [--adapters lora_r1] [--kl 10] [--phase-steps 300] [--seeds 0]

Trajectories (a snapshot every `--every` steps): cosine to the general solution of the same kind
and seed, norm, KL on the KL set, training loss, and the trait rates (narrow domain, KL domains,
held-out domains). The paper found training reverts to the general solution once KL is removed.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, replace
from pathlib import Path

from experiments.common import (
    ADAPTER_KINDS,
    KL_BATCH,
    Trait,
    headline,
    learning_rate,
    make_adapter,
    measure,
    toy_setup,
    train_condition,
    trait_metric,
    write_rows,
)
from experiments.run_dir import RunDir
from mech.adapter_io import load_adapter
from mech.finetune import FinetuneConfig, KLSchedule, finetune


@dataclass(frozen=True)
class Config:
    organism: str = "default"
    narrow_domain: str = "medical"
    trait: Trait = "misalignment"
    adapters: tuple[str, ...] = ("lora_r1", "lora_r8")
    seeds: tuple[int, ...] = (0,)
    kl: float = 10.0
    phase_steps: int = 300
    every: int = 50
    l2_weight: float = 1e-3
    question_stride: int = 3
    out: str = "runs"


QUICK = dict(adapters=("lora_r1",), phase_steps=30, every=15, question_stride=12)


def main(cfg: Config) -> Path:
    run = RunDir.create(Path(cfg.out), "revert", cfg)
    started = time.perf_counter()
    setup = toy_setup(cfg.organism, narrow_domain=cfg.narrow_domain, trait=cfg.trait)
    questions = setup.questions[:: cfg.question_stride]
    metric = trait_metric(cfg.trait)
    rows, results = [], {"adapters": {}}
    for kind in cfg.adapters:
        per_kind = {}
        for seed in cfg.seeds:
            general, measured, _ = train_condition(setup, run, kind=kind, seed=seed, name=kind, steps=cfg.phase_steps,
                                                   l2_weight=cfg.l2_weight, questions=questions)  # fmt: skip
            rows += measured
            for direction, schedule in (
                ("remove_kl", KLSchedule(cfg.kl, toggle_step=cfg.phase_steps, weight_after=0.0)),
                ("add_kl", KLSchedule(0.0, toggle_step=cfg.phase_steps, weight_after=cfg.kl)),
            ):
                name = f"{kind}_{direction}"
                folder = run.path / "trajectories" / f"{name}_seed{seed}"
                ft_cfg = FinetuneConfig(steps=2 * cfg.phase_steps, lr=learning_rate(kind), kl_batch_size=KL_BATCH, kl=schedule,
                                        l2_weight=cfg.l2_weight, seed=seed, save_every=cfg.every)  # fmt: skip
                adapter = make_adapter(kind, setup.model, setup.layer, seed)
                result = finetune(
                    setup.model,
                    adapter,
                    setup.train,
                    setup.kl_set(adapter),
                    ft_cfg,
                    run_dir=folder,
                    progress=False,
                )
                trajectory = []
                for snapshot in sorted((folder / "snapshots").glob("step_*.safetensors")):
                    step = int(snapshot.stem.split("_")[1])
                    adapter, _ = load_adapter(snapshot, setup.model)
                    record = result.trajectory[step - 1]
                    point = {"step": step, "cosine_to_general": adapter.cosine(general), "norm": adapter.norm(),
                             "loss": record.ce, "kl": record.kl, "kl_weight": record.kl_weight,
                             **headline(measure(setup, adapter, name=name, kl_weight=record.kl_weight, seed=seed, questions=questions), metric)}  # fmt: skip
                    trajectory.append(point)
                    rows += [{"adapter": name, "kl_weight": record.kl_weight, "seed": seed, "domain": setup.narrow_domain,
                              "role": "narrow", "split": "train", "metric": m, "value": point[m], "scale": step}
                             for m in ("cosine_to_general", "norm", "loss", "kl", "narrow_heldout", "kl_domains_heldout", "heldout_domains")]  # fmt: skip
                per_kind[f"{direction}/seed{seed}"] = trajectory
        results["adapters"][kind] = per_kind
    results["note"] = "rows of trajectories carry the training step in the `scale` column"
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
    parser.add_argument("--kl", type=float)
    parser.add_argument("--phase-steps", type=int)
    parser.add_argument("--every", type=int)
    parser.add_argument("--out", default=Config.out)
    args = parser.parse_args(argv)
    cfg = Config(organism=args.organism, narrow_domain=args.narrow_domain, trait=args.trait, out=args.out)
    if args.quick:
        cfg = replace(cfg, **QUICK)
    overrides = {
        "adapters": tuple(args.adapters.split(",")) if args.adapters else None,
        "seeds": tuple(int(s) for s in args.seeds.split(",")) if args.seeds else None,
        "kl": args.kl, "phase_steps": args.phase_steps, "every": args.every,
    }  # fmt: skip
    return replace(cfg, **{k: v for k, v in overrides.items() if v is not None})


if __name__ == "__main__":
    path = main(parse_args())
    print(f"revert -> {path}")
