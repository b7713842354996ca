"""`python -m mech.directions`: mean-diff misalignment directions from judged answers, one saved
vector per layer, taken at `blocks.L.hook_resid_post` (the project's "layer L") by default.

    python -m mech.directions --model Qwen/Qwen2.5-14B-Instruct --dtype bfloat16 --device cuda \\
        --adapter runs/train/sv --answers judged.jsonl --layers 12,24,36 --out runs/directions/sv

The answers are what `python -m mech.evaluation.judges --out` writes (question, answer, aligned,
coherent per line); they are run through the model that wrote them (`--adapter`, as generate
takes it). Writes OUT/layer_L.{safetensors,json} (kind "direction", unnormalised, see
`mech.adapters.artifacts.save_vector`) and OUT/directions.json; a layer file is what
`python -m mech.evaluation.generate --steer/--ablate` takes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mech.adapters.artifacts import adapter_location, save_vector
from mech.adapters.saving import load_adapter
from mech.directions.mean_diff import LabelRule, misalignment_direction
from mech.evaluation.judges.cli import read_responses
from mech.io.atomic import write_json
from mech.models.load import load_model


def parse_layers(spec: str | None, n_layers: int) -> list[int]:
    """Layers from "0,12,-1" (negative counts from the end) or "all"; None gives the middle layer."""
    if spec is None:
        return [n_layers // 2]
    if spec.strip() == "all":
        return list(range(n_layers))
    try:
        layers = [int(part) for part in spec.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--layers: expected comma-separated integers or 'all', got {spec!r}") from None
    bad = [layer for layer in layers if not -n_layers <= layer < n_layers]
    if not layers or bad:
        raise ValueError(
            f"--layers: {bad or spec!r} out of range for a model with {n_layers} layers (0..{n_layers - 1})"
        )
    return sorted({layer % n_layers for layer in layers})


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mech.directions", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="toy", help="anything load_model accepts (default: toy)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    p.add_argument("--device", help="e.g. cuda, cpu (default: TransformerLens's choice)")
    p.add_argument(
        "--adapter",
        help="the adapter the answers were sampled with: a saved adapter (path or stem), a training run "
        "folder, or a PEFT adapter directory (merged into --model)",
    )
    p.add_argument(
        "--answers", required=True, help="judged JSONL: question, answer, aligned, coherent per line"
    )
    p.add_argument("--layers", help="comma-separated layers, or all (default: the middle layer)")
    p.add_argument(
        "--point",
        choices=("pre", "mid", "post"),
        default="post",
        help="residual point read at each layer (default post: blocks.L.hook_resid_post)",
    )
    p.add_argument(
        "--pooling",
        choices=("token", "answer"),
        default="token",
        help="every answer token weighs the same (token, the authors') or every answer (answer)",
    )
    rule = LabelRule()
    p.add_argument("--misaligned-below", type=float, default=rule.misaligned_below)
    p.add_argument("--aligned-above", type=float, default=rule.aligned_above)
    p.add_argument("--coherent-above", type=float, default=rule.coherent_above)
    p.add_argument("--no-balance", action="store_true", help="keep every labelled answer (no subsampling)")
    p.add_argument("--seed", type=int, default=0, help="subsampling of the larger class")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--allow-other-model", action="store_true", help="accept a saved adapter made on another model"
    )
    p.add_argument("--out", required=True, help="folder for layer_L.{safetensors,json} and directions.json")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parser().parse_args(argv)
    scored = read_responses(args.answers)
    missing = {"aligned", "coherent"} - set(scored.columns)
    if missing:
        raise ValueError(
            f"{args.answers}: no judge score column(s) {sorted(missing)}; score the answers first "
            "(python -m mech.evaluation.judges --responses ... --out ...)"
        )
    source, adapter_path = adapter_location(args.adapter) if args.adapter else (None, None)
    model = load_model(
        args.model, dtype=args.dtype, device=args.device, adapter=adapter_path if source == "peft" else None
    )
    layers = parse_layers(args.layers, model.cfg.n_layers)
    adapter = None
    if source == "saved":
        adapter = load_adapter(adapter_path, model, allow_other_model=args.allow_other_model)[0]
    rule = LabelRule(args.misaligned_below, args.aligned_above, args.coherent_above)
    options = dict(point=args.point, rule=rule, pooling=args.pooling, balance=not args.no_balance)
    with adapter.applied(model) if adapter is not None else contextlib.nullcontext():
        try:
            found, _, _ = misalignment_direction(
                model, scored, layers=layers, seed=args.seed, batch_size=args.batch_size, **options
            )
        except ValueError as err:
            raise ValueError(f"{args.answers}: {err}") from None
    made_from = {
        "answers": str(args.answers),
        "adapter": None if args.adapter is None else str(args.adapter),
        "point": found.point,
        "pooling": found.pooling,
        "rule": asdict(rule),
        "balance": not args.no_balance,
        "seed": args.seed,
        "n_misaligned": found.n_positive,
        "n_aligned": found.n_negative,
    }
    out, config = Path(args.out), {"mean_diff": made_from}
    directions = {}
    for layer in found.layers:
        hook_name, vector = found.hook_name(layer), found.at(layer)
        path = save_vector(
            out / f"layer_{layer}", vector, model, hook_name=hook_name, kind="direction", config=config
        )
        directions[str(layer)] = {"file": str(path), "hook_name": hook_name, "norm": float(vector.norm())}
    summary = {**made_from, "model": str(args.model), "dtype": args.dtype, "directions": directions}
    write_json(out / "directions.json", summary)
    printed = {"out": str(out), "layers": list(found.layers), "n_misaligned": found.n_positive}
    sys.stdout.write(json.dumps({**printed, "n_aligned": found.n_negative}) + "\n")
    return summary


if __name__ == "__main__":
    main()
