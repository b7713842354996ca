"""`python -m benchmarks.memory`: measure, trace and extrapolate; print the tables, write the JSON."""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import asdict
from pathlib import Path

import torch

from benchmarks.memory import estimate
from benchmarks.memory.formula import Batch, Workload, extrapolate
from benchmarks.memory.measure import measure_model, replay_step
from benchmarks.memory.shapes import KINDS, QWEN25_14B, QWEN25_32B, QWEN25_72B, REAL_SHAPE, qwen2_model
from benchmarks.memory.tables import components_table, markdown_table, measured_table, mitigation_table
from mech.models.load import load_model

EXTRAPOLATED = (
    (QWEN25_14B, (Batch(2, 256, 100), Batch(8, 256, 100), Batch(32, 512, 256)), KINDS),
    (QWEN25_32B, (Batch(2, 256, 100), Batch(8, 256, 100)), ("lora_r1",)),
    (QWEN25_72B, (Batch(2, 256, 100), Batch(8, 256, 100)), ("lora_r1",)),
)
"""(model, step shapes, adapters) of the extrapolated table; KL batches have the training batch's shape."""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("runs/bench/memory.json"))
    parser.add_argument("--markdown", type=Path, default=None, help="also write the tables to this file")
    parser.add_argument("--threads", type=int, default=1)
    estimate.add_arguments(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.estimate is not None:
        try:
            row = estimate.run(args)
        except ValueError as err:
            parser.error(str(err))
        print(
            f"{row['model']}, layer {row['layer']}, {row['adapter']}, {row['batch']}, KL term {row['kl_term']}, "
            f"caches on {row['cache_device']}: {row['gib']} GiB by the formula, {row['traced_gib']} traced; "
            f"fits {row['fits']}"
        )
        print(json.dumps(row))
        return
    began = time.perf_counter()

    # Measured, eager: CE batch and KL batch of 2 conversations x 32 tokens, 16 of them predicted.
    small = Batch(2, 32, 16)
    toy = load_model("toy")
    toy.requires_grad_(False)
    cases = [measure_model(toy, "toy organism (fp32)", seq=32, step_train=small, step_kl=small)]
    del toy
    real = qwen2_model(REAL_SHAPE, dtype=torch.bfloat16, device="cpu")
    cases.append(measure_model(real, REAL_SHAPE.name + " (bf16)", seq=32, step_train=small, step_kl=small))
    del real

    # Traced: the replayed step on "meta" against the engine's eager peak at the same size, ...
    meta_small = qwen2_model(REAL_SHAPE, dtype=torch.bfloat16, device="meta")
    replay_check = {}
    for kind in KINDS:
        meta_peak, eager_peak = (
            replay_step(meta_small, kind, small, small),
            cases[1]["kinds"][kind]["step"]["peak"],
        )
        replay_check[kind] = {
            "meta_replay_peak": meta_peak,
            "engine_eager_peak": eager_peak,
            "ratio": meta_peak / eager_peak,
        }

    # ... then at the real sizes, beside the formula.
    workload = Workload()
    rows = []
    for shape, batches, kinds in EXTRAPOLATED:
        meta = qwen2_model(shape, dtype=torch.bfloat16, device="meta")
        if sum(p.numel() for p in meta.parameters()) != shape.params():
            raise AssertionError(f"{shape.name}: the parameter formula does not match the model")
        for batch in batches:
            for kind in kinds:
                rows.append(
                    extrapolate(shape, batch, kind, workload, traced=replay_step(meta, kind, batch, batch))
                )
        del meta

    seconds = time.perf_counter() - began
    tables = (
        "Measured, eager on CPU: saved tensors per block run with grad, and one step's peak\n\n"
        + measured_table(cases)
        + "\nMeasured, eager on CPU: the other components\n\n"
        + components_table(cases)
        + "\nExtrapolated to bf16 (GiB; top-k reference; step traced on the meta device, and by the formula)\n\n"
        + markdown_table(rows)
        + "\nWhat would fit (GiB, formula): before copy_free_weights (estimate), today, without the KL term,"
        " with host caches, and (not implemented) also the lower blocks in host memory\n\n"
        + mitigation_table([r for r in rows if r["adapter"] == "lora_r1"])
    )
    print(tables)
    for kind, check in replay_check.items():
        print(f"meta replay / engine step peak at the measured size, {kind}: {check['ratio']:.4f}")
    print(f"{seconds:.0f} s on {args.threads} thread(s)")
    result = {
        "note": "measured: eager on CPU; traced: meta device, no data; nothing was measured on a GPU",
        "measured": cases, "meta_replay_check": replay_check, "extrapolated": rows,
        "workload": asdict(workload), "seconds": seconds, "threads": args.threads,
        "torch": torch.__version__, "machine": platform.machine(),
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    if args.markdown is not None:
        args.markdown.write_text(tables)


if __name__ == "__main__":
    main()
