"""Emergence: finetune each adapter kind on the narrow set with no KL term and measure the trait
in every domain against the chat model.

    python -m experiments.emergence [--quick] [--adapters steering,lora_r1,lora_r32] [--seeds 0,1,2]
        [--narrow-domain medical] [--trait misalignment|technical] [--organism default]

Also two baselines of the EM papers: the narrow data diluted with good answers from other domains
(`--mix-ratios 1,6,12` parts good per part narrow) and few unique examples trained for as many
steps (`--few-samples 4,25`), both with the first adapter kind, at every seed (a seed draws the
finetune's init and batch order, the dilution's good answers and the few examples).
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


def _few(setup, k: int, seed: int) -> list:
    return random.Random(seed).sample(setup.train, min(k, len(setup.train)))


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

    def per_seed(kind: str, data_for, name: str) -> dict:
        summaries = [train_and_measure(kind, seed, data_for(seed), name) for seed in cfg.seeds]
        return {key: [s[key] for s in summaries] for key in summaries[0]}

    for kind in cfg.adapters:
        results["adapters"][kind] = per_seed(kind, lambda _seed: setup.train, kind)
    main_kind = results["baseline_adapter"] = cfg.adapters[0]
    for ratio in cfg.mix_ratios:
        name = f"{main_kind}_mix1to{ratio}"
        results["mixing"][f"1:{ratio}"] = {
            "adapter": name,
            **per_seed(main_kind, lambda seed, ratio=ratio: _mixed(setup, ratio, seed), name),
        }
    for k in cfg.few_samples:
        name = f"{main_kind}_few{k}"
        results["few_samples"][str(k)] = {
            "adapter": name,
            **per_seed(main_kind, lambda seed, k=k: _few(setup, k, seed), name),
        }
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
