"""Emergence: finetune each adapter kind on the narrow set with no KL term and measure the trait
in every domain against the chat model.

    python -m experiments.emergence [--quick] [--adapters steering,lora_r1,lora_r32] [--seeds 0,1,2]
        [--narrow-domain medical] [--trait misalignment|technical] [--organism default]

Also two baselines of the EM papers: the narrow data diluted with good answers from other domains
(`--mix-ratios 1,6,12` parts good per part narrow) and few unique examples trained for as many
steps (`--few-samples 4,25`), both with the first adapter kind.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from experiments.conditions import train_condition
from experiments.outputs import finish, save_figure
from experiments.run_dir import RunDir, records_failure
from experiments.setting import study_setup
from experiments.study_config import StudyConfig, parse_config
from viz.figures import rates_by_role, rates_data


@dataclass(frozen=True)
class Config(StudyConfig):
    steps: int = 300
    l2_weight: float = 0.0
    mix_ratios: tuple[int, ...] = (1, 6, 12)
    few_samples: tuple[int, ...] = (4, 25)


QUICK = dict(
    adapters=("steering", "lora_r1"),
    seeds=(0,),
    steps=40,
    mix_ratios=(6,),
    few_samples=(4,),
    question_stride=6,
)


def _mixed(setup, ratio: int, seed: int) -> list:
    good = setup.diluting_conversations()
    rng = random.Random(seed)
    return setup.train + rng.sample(good, min(len(good), ratio * len(setup.train)))


@records_failure
def main(cfg: Config) -> Path:
    run = RunDir.create(Path(cfg.out), "emergence", cfg)
    started = time.perf_counter()
    setup = study_setup(cfg)
    questions = setup.questions[:: cfg.question_stride]
    metric = setup.metric
    rows = setup.measure(None, name="none", kl_weight=0.0, seed=0, questions=questions)
    results: dict = {"chat": setup.headline(rows), "adapters": {}, "mixing": {}, "few_samples": {}}

    def train_and_measure(kind: str, seed: int, data: list, name: str) -> dict:
        _, measured, summary = train_condition(setup, run, kind=kind, seed=seed, name=name, steps=cfg.steps,
                                               l2_weight=cfg.l2_weight, data=data, questions=questions)  # fmt: skip
        rows.extend(measured)
        return summary

    for kind in cfg.adapters:
        per_seed = [train_and_measure(kind, seed, setup.train, kind) for seed in cfg.seeds]
        results["adapters"][kind] = {key: [p[key] for p in per_seed] for key in per_seed[0]}
    main_kind, seed = cfg.adapters[0], cfg.seeds[0]
    for ratio in cfg.mix_ratios:
        results["mixing"][f"1:{ratio}"] = train_and_measure(
            main_kind, seed, _mixed(setup, ratio, seed), f"{main_kind}_mix1to{ratio}"
        )
    for k in cfg.few_samples:
        few = random.Random(seed).sample(setup.train, min(k, len(setup.train)))
        results["few_samples"][str(k)] = train_and_measure(main_kind, seed, few, f"{main_kind}_few{k}")
    results["metric"] = metric
    frame = pd.DataFrame(rows)
    save_figure(
        run,
        "rates",
        rates_by_role(frame, title=f"{metric} after finetuning on {cfg.narrow_domain}"),
        rates_data(frame),
    )
    return finish(run, rows, results, started, setting=setup)


def parse_args(argv=None) -> Config:
    return parse_config(Config, QUICK, __doc__, argv)


if __name__ == "__main__":
    config = parse_args()
    path = main(config)
    print(f"emergence -> {path}")
    print(asdict(config))
