"""Pre-training significance: how much do the general, narrow and random directions change the
model on pre-training text, at equal norms?

    python -m experiments.pretraining_kl [--quick] [--adapters steering,lora_r1] [--docs 200] [--pretraining-text FILE]

For each adapter kind and seed: the general (KL = 0) and narrow (KL = `--narrow-kl`) solutions and
a random control of equal norm (the general solution with every noise unit replaced by an
orthogonal random one, eps = 1, then rescaled), each rescaled to a grid of norms (multiples of the
general solution's norm). Measured: mean KL(chat || adapted) per token of the organism's
pre-training documents (or those of `--pretraining-text`: one per line, or JSONL `text`), pads excluded. The paper found the general
direction matters more on pre-training text than the narrow one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from experiments.conditions import solution_pair
from experiments.outputs import finish, save_figure
from experiments.run_dir import RunDir, records_failure
from experiments.setting import study_setup
from experiments.study_config import PairConfig, parse_config
from mech.evaluation.documents import read_documents
from mech.evaluation.loss_landscape import at_norm, text_kl
from viz.figures import curve_data, curves


@dataclass(frozen=True)
class Config(PairConfig):
    adapters: tuple[str, ...] = ("steering", "lora_r1", "lora_r8")
    norm_factors: tuple[float, ...] = (0.25, 0.5, 1.0, 1.5, 2.0)
    docs: int = 200


QUICK = dict(
    adapters=("steering",), seeds=(0,), steps=40, norm_factors=(0.5, 1.0), docs=24, question_stride=12
)


@records_failure
def main(cfg: Config) -> Path:
    run = RunDir.create(Path(cfg.out), "pretraining_kl", cfg)
    started = time.perf_counter()
    setup = study_setup(cfg)
    if cfg.pretraining_text:
        texts, special = read_documents(cfg.pretraining_text, limit=cfg.docs), True
    else:
        texts, special = setup.pretraining_texts(cfg.docs)
    rows, results = [], {"adapters": {}}
    for kind in cfg.adapters:
        per_seed = []
        for seed in cfg.seeds:
            adapters, measured, summaries = solution_pair(setup, run, kind=kind, seed=seed, steps=cfg.steps,
                                                          narrow_kl=cfg.narrow_kl, l2_weight=cfg.l2_weight, from_run=cfg.from_run,
                                                          questions=setup.questions[:: cfg.question_stride])  # fmt: skip
            rows += measured
            adapters["random"] = adapters["general"].perturbed(
                1.0, torch.Generator().manual_seed(1000 + seed)
            )
            base_norm = adapters["general"].norm()
            by_norm = {}
            for factor in cfg.norm_factors:
                norm = factor * base_norm
                labels = ("general", "narrow", "random")
                kls = text_kl(
                    setup.model,
                    [at_norm(adapters[k], norm) for k in labels],
                    texts,
                    add_special_tokens=special,
                )
                by_norm[f"{norm:.4g}"] = dict(zip(labels, kls, strict=True))
                rows += [{"adapter": f"{kind}_{label}", "kl_weight": cfg.narrow_kl if label == "narrow" else 0.0, "seed": seed,
                          "domain": "pretraining", "role": "pretraining", "split": "all", "metric": "text_kl", "value": kl,
                          "scale": norm} for label, kl in zip(labels, kls, strict=True)]  # fmt: skip
            per_seed.append({"cosine_general_narrow": summaries["cosine"], "kl_by_norm": by_norm})
        general_larger = sum(v["general"] > v["narrow"] for s in per_seed for v in s["kl_by_norm"].values())
        results["adapters"][kind] = {"per_seed": per_seed, "general_above_narrow": general_larger,
                                     "comparisons": sum(len(s["kl_by_norm"]) for s in per_seed)}  # fmt: skip
    results["texts"] = {
        "source": cfg.pretraining_text or f"organism pre-training sample ({cfg.docs} documents)",
        "n": len(texts),
    }
    kls = pd.DataFrame(rows).query("metric == 'text_kl'")
    parts = kls["adapter"].str.rsplit("_", n=1)  # "<kind>_<general|narrow|random>"
    kls = kls.assign(kind=parts.str[0], solution=parts.str[1])
    save_figure(
        run,
        "text_kl",
        curves(kls, x="scale", metric="text_kl", hue="solution", style="kind",
               title="KL on pre-training text: general, narrow and random at equal norms", xlabel="norm"),
        curve_data(kls, metric="text_kl"),
    )  # fmt: skip
    return finish(run, rows, results, started, setting=setup)


def parse_args(argv=None) -> Config:
    return parse_config(Config, QUICK, __doc__, argv)


if __name__ == "__main__":
    path = main(parse_args())
    print(f"pretraining_kl -> {path}")
