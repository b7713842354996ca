"""Reversion: train a narrow solution (with KL), then keep training without the KL term; does it
drift back to the general solution? And the reverse: add the KL term to a general solution.

    python -m experiments.revert [--quick] [--adapters lora_r1] [--kl-weight 10] [--phase-steps 300] [--seeds 0]

Trajectories (a snapshot every `--every` steps): cosine to the general solution of the same kind
and seed, norm, KL on the KL set, training loss, and the trait rates (narrow domain, KL domains,
held-out domains). The paper found training reverts to the general solution once KL is removed.
The control (`keep_kl`) trains as long with the KL term never removed: what the cosine does in
the second phase without any change, which the reversion is compared with.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from experiments.conditions import setting_adapter, train_condition
from experiments.outputs import finish, save_figure
from experiments.run_dir import RunDir, records_failure
from experiments.setting import study_setup
from experiments.study_config import StudyConfig, parse_config
from mech.adapters.saving import load_adapter
from mech.training.config import FinetuneConfig, KLSchedule
from mech.training.engine import finetune
from viz.figures import switch_data, switch_trajectories


@dataclass(frozen=True)
class Config(StudyConfig):
    adapters: tuple[str, ...] = ("lora_r1", "lora_r8")
    seeds: tuple[int, ...] = (0,)
    kl_weight: float = 10.0
    """The KL weight of the narrow phase."""
    phase_steps: int = 300
    every: int = 50
    question_stride: int = 3


QUICK = dict(adapters=("lora_r1",), phase_steps=30, every=15, question_stride=12)


@records_failure
def main(cfg: Config) -> Path:
    run = RunDir.create(Path(cfg.out), "revert", cfg)
    started = time.perf_counter()
    setup = study_setup(cfg)
    questions = setup.questions[:: cfg.question_stride]
    rows, results = [], {"adapters": {}}
    for kind in cfg.adapters:
        per_kind = {}
        for seed in cfg.seeds:
            general, measured, _ = train_condition(setup, run, kind=kind, seed=seed, name=kind, steps=cfg.phase_steps,
                                                   l2_weight=cfg.l2_weight, questions=questions)  # fmt: skip
            rows += measured
            for direction, schedule in (
                ("remove_kl", KLSchedule(cfg.kl_weight, toggle_step=cfg.phase_steps, weight_after=0.0)),
                ("add_kl", KLSchedule(0.0, toggle_step=cfg.phase_steps, weight_after=cfg.kl_weight)),
                ("keep_kl", KLSchedule(cfg.kl_weight)),  # the control: the same steps, KL never removed
            ):
                name = f"{kind}_{direction}"
                folder = run.path / "trajectories" / f"{name}_seed{seed}"
                ft_cfg = FinetuneConfig(steps=2 * cfg.phase_steps, lr=setup.learning_rate(kind), batch_size=setup.batch_size,
                                        kl_batch_size=setup.kl_batch_size, kl=schedule, l2_weight=cfg.l2_weight, seed=seed,
                                        save_every=cfg.every, cache_device=setup.cache_device)  # fmt: skip
                adapter = setting_adapter(setup, kind, seed)
                result = finetune(
                    setup.model,
                    adapter,
                    setup.train,
                    setup.kl_set(adapter),
                    ft_cfg,
                    run_dir=folder,
                    progress=False,
                    cache=setup.cache,
                )
                trajectory = []
                for snapshot in sorted((folder / "snapshots").glob("step_*.safetensors")):
                    step = int(snapshot.stem.split("_")[1])
                    adapter, _ = load_adapter(snapshot, setup.model)
                    record = result.trajectory[step - 1]
                    point = {"step": step, "cosine_to_general": adapter.cosine(general), "norm": adapter.norm(),
                             "loss": record.ce, "kl": record.kl, "kl_weight": record.kl_weight,
                             **setup.headline(setup.measure(adapter, name=name, kl_weight=record.kl_weight, seed=seed, questions=questions))}  # fmt: skip
                    trajectory.append(point)
                    rows += [{"adapter": name, "kl_weight": record.kl_weight, "seed": seed, "domain": setup.narrow_domain,
                              "role": "narrow", "split": "train", "metric": m, "value": point[m], "scale": step}
                             for m in ("cosine_to_general", "norm", "loss", "kl", "narrow_heldout", "kl_domains_heldout", "heldout_domains")]  # fmt: skip
                per_kind[f"{direction}/seed{seed}"] = trajectory
        results["adapters"][kind] = per_kind
    results["note"] = "rows of trajectories carry the training step in the `scale` column"
    frame = pd.DataFrame(rows)
    save_figure(
        run,
        "cosine_to_general",
        switch_trajectories(frame, metric="cosine_to_general", title="cosine to the general solution"),
        switch_data(frame, metric="cosine_to_general"),
    )
    return finish(run, rows, results, started, setting=setup)


def parse_args(argv=None) -> Config:
    return parse_config(Config, QUICK, __doc__, argv)


if __name__ == "__main__":
    path = main(parse_args())
    print(f"revert -> {path}")
