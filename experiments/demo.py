"""`make demo`: the paper's experiments on the shipped toy organism, one after another (never two
torch jobs at once), then an offline HTML report and a one-screen table of the findings.

The configurations are smaller than the defaults (one seed, fewer steps and questions) so the
whole study fits in about 17 minutes on 2 CPU cores (measured 993 s); `efficiency`, `stability` and
`pretraining_kl` analyse the solutions the `narrow_kl` sweep trained. Run the scripts themselves
for more seeds and adapter kinds.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

from experiments import (
    directions,
    efficiency,
    emergence,
    narrow_kl,
    persona_share,
    pretraining_kl,
    revert,
    sae_compare,
    stability,
)
from experiments.summary import findings, print_table
from viz.report import write_report

ADAPTERS = ("steering", "lora_r1", "lora_r8")


def plan(out: str, quick: bool):
    """(module, config) pairs in running order; `narrow_kl` first, the analyses reuse it."""
    base = {"out": out}
    if quick:
        return [
            (m, replace(m.parse_args(["--quick"]), **base))
            for m in (narrow_kl, emergence, revert, persona_share, directions, sae_compare)
        ]
    sweep = replace(
        narrow_kl.Config(),
        adapters=ADAPTERS,
        kl_weights=(0.0, 10.0),
        seeds=(0,),
        steps=150,
        question_stride=3,
        **base,
    )
    return [
        (narrow_kl, sweep),
        (efficiency, replace(efficiency.Config(), adapters=ADAPTERS, seeds=(0,), question_stride=6, **base)),
        (stability, replace(stability.Config(), adapters=ADAPTERS, seeds=(0,), noise_seeds=10, question_stride=6, **base)),
        (pretraining_kl, replace(pretraining_kl.Config(), adapters=ADAPTERS, seeds=(0,), docs=100, question_stride=6, **base)),
        (emergence, replace(emergence.Config(), adapters=ADAPTERS, seeds=(0,), steps=150, mix_ratios=(6,), few_samples=(8,), question_stride=3, **base)),
        (revert, replace(revert.Config(), adapters=("lora_r1",), phase_steps=100, every=25, question_stride=6, **base)),
        (persona_share, replace(persona_share.Config(), adapters=("lora_r1",), seeds=(0,), steps=100, noise_seeds=5, question_stride=6, **base)),
        (directions, replace(directions.Config(), seeds=(0,), finetunes=("lora_r1:medical", "lora_r8:medical", "lora_r8:finance"), steps=150,
                             samples=2, steer_scales=(0.0, 2.0, 4.0, 8.0), lens_kl_weights=(0.0, 10.0), persona_documents=200, question_stride=6, **base)),
        (sae_compare, replace(sae_compare.Config(), steps=150, persona_documents=300, context_documents=150, question_stride=6, **base)),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--quick", action="store_true", help="the experiments' --quick sizes (a few minutes)")
    args = parser.parse_args()
    started, paths, sweep = time.perf_counter(), [], None
    for module, cfg in plan(args.out, args.quick):
        name = module.__name__.split(".")[-1]
        if hasattr(cfg, "from_run") and sweep is not None:
            cfg = replace(cfg, from_run=str(sweep), narrow_kl=10.0)
        t = time.perf_counter()
        path = module.main(cfg)
        sweep = path if name == "narrow_kl" else sweep
        paths.append(path)
        print(f"{name:>15}: {time.perf_counter() - t:5.0f} s -> {path}", flush=True)
    rows = findings(paths)
    report = write_report(Path(args.out) / "report.html", "misalign-lens: the toy organism study", rows, paths,
                          intro="One seed, reduced sizes (make demo); see the README for the multi-seed results.")  # fmt: skip
    print()
    print_table(rows)
    print(f"\nreport: {report}  ({time.perf_counter() - started:.0f} s in all)")


if __name__ == "__main__":
    main()
