"""One run's GPU memory, by the formula and by the meta trace: `python -m benchmarks.memory --estimate`.

    python -m benchmarks.memory --estimate Qwen/Qwen2.5-14B-Instruct --layer 24 --adapter lora_r1 \\
        --batch 2x256 --train-size 6000 --kl-size 6000 [--cache-device cpu] [--no-kl]

The model is a known Qwen2.5 name or a local checkpoint directory (its config.json gives the
shapes; no weights are read). The last line printed is one JSON object: `gib` (the peak by the
formula), `fits` (the smallest single GPU that holds it), `traced_gib` (the same run with the step
traced on the meta device) and every component.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, replace
from pathlib import Path

import torch

from benchmarks.memory.formula import Batch, Workload, extrapolate
from benchmarks.memory.measure import replay_step
from benchmarks.memory.shapes import GIB, KINDS, QWEN25_14B, QWEN25_32B, QWEN25_72B, Shape, qwen2_model
from benchmarks.memory.tables import fits

KNOWN = {f"Qwen/{s.name}": s for s in (QWEN25_14B, QWEN25_32B, QWEN25_72B)}


def shape_named(name: str) -> Shape:
    """A known Qwen2.5 shape (with or without "Qwen/"), or a Qwen2 checkpoint folder's config.json."""
    known = KNOWN.get(name) or KNOWN.get(f"Qwen/{name}")
    if known is not None:
        return known
    config_path = Path(name) / "config.json"
    if not config_path.is_file():
        raise ValueError(f"--estimate {name!r}: not one of {', '.join(KNOWN)} and no {config_path}")
    hf = json.loads(config_path.read_text())
    if hf.get("model_type") != "qwen2":
        raise ValueError(
            f"{config_path}: model_type {hf.get('model_type')!r}; the formula is for Qwen2 blocks"
        )
    return Shape(
        Path(name).name, hf["num_hidden_layers"], hf["hidden_size"], hf["intermediate_size"],
        hf["num_attention_heads"], hf.get("num_key_value_heads") or hf["num_attention_heads"],
        hf["hidden_size"] // hf["num_attention_heads"], hf["vocab_size"],
    )  # fmt: skip


def parse_batch(text: str, assistant: int | None) -> Batch:
    """ "BxS" (conversations x tokens); `assistant` predicted tokens each (default: half the
    sequence, at most 100 up to 256 tokens, as docs/scaling.md's table)."""
    try:
        batch, seq = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--batch {text!r}: expected conversations x tokens, e.g. 2x256") from None
    if batch < 1 or seq < 2:
        raise ValueError(f"--batch {text!r}: needs at least 1 conversation of 2 tokens")
    predicted = assistant if assistant is not None else (min(100, seq // 2) if seq <= 256 else seq // 2)
    if not 0 < predicted < seq:
        raise ValueError(f"--assistant {predicted}: must be between 1 and {seq - 1} for {text}")
    return Batch(batch, seq, predicted)


def estimate(
    shape: Shape, kind: str, batch: Batch, workload: Workload, *, cache_device: str, kl: bool, trace: bool
) -> dict:
    """The run's row (bytes) with its step traced on "meta" when `trace`, and the headline in GiB."""
    traced = None
    if trace:
        meta = qwen2_model(shape, dtype=torch.bfloat16, device="meta")
        traced = replay_step(meta, kind, batch, batch if kl else None, layer=shape.layer)
    if not kl:
        workload = replace(workload, kl_conversations=0)
    row = extrapolate(shape, batch, kind, workload, traced=None, cache_device=cache_device, kl=kl)
    traced_total = None if traced is None else row["total_topk"] - row["step_estimate"] + traced
    return {
        "model": shape.name, "layer": shape.layer, "adapter": kind, "batch": batch.label(),
        "assistant_per_conversation": batch.assistant, "kl_term": kl, "cache_device": cache_device,
        "workload": asdict(workload), "gib": round(row["total_topk"] / GIB, 2),
        "fits": fits(row["total_topk"]),
        "traced_gib": None if traced_total is None else round(traced_total / GIB, 2),
        "components_gib": {k: round(row[k] / GIB, 3) for k in (
            "weights", "adapter_state", "residual_cache", "reference_topk", "caches_on_device",
            "step_estimate", "weight_copies_avoided")},
        "note": "formula and meta trace (no GPU); the CUDA context, cuBLAS workspaces and allocator "
        "fragmentation add a few GiB",
    }  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--estimate", metavar="MODEL", help="estimate one run instead of the full benchmark")
    parser.add_argument("--layer", type=int, default=None, help="adapter block (default: the middle one)")
    parser.add_argument("--adapter", choices=KINDS, default="lora_r1")
    parser.add_argument("--batch", default="2x256", help="conversations x tokens per micro-batch")
    parser.add_argument("--assistant", type=int, default=None, help="predicted tokens per conversation")
    parser.add_argument("--train-size", type=int, default=Workload.train_conversations)
    parser.add_argument("--kl-size", type=int, default=Workload.kl_conversations)
    parser.add_argument("--tokens", type=int, default=Workload.tokens, help="tokens per cached conversation")
    parser.add_argument("--cache-device", choices=("device", "cpu"), default="device")
    parser.add_argument("--no-kl", action="store_true", help="no KL term (kl_data=None)")
    parser.add_argument("--no-trace", action="store_true", help="skip the meta-device trace")


def run(args: argparse.Namespace) -> dict:
    shape = shape_named(args.estimate)
    if args.layer is not None:
        if not 0 <= args.layer < shape.n_layers:
            raise ValueError(f"--layer {args.layer}: {shape.name} has layers 0..{shape.n_layers - 1}")
        shape = replace(shape, adapter_layer=args.layer)
    batch = parse_batch(args.batch, args.assistant)
    workload = Workload(args.train_size, args.kl_size, args.tokens, min(Workload.assistant, args.tokens - 1))
    return estimate(
        shape, args.adapter, batch, workload, cache_device=args.cache_device, kl=not args.no_kl,
        trace=not args.no_trace,
    )  # fmt: skip
