"""Train one adapter from the command line, resumably: re-running the same command after a crash
(kill -9, a lost node) continues from the last saved step and ends bit-identical to an
uninterrupted run.

    python -m mech.training --model toy --train narrow.jsonl --kl other.jsonl --kl-weight 10 \\
        --adapter lora --rank 1 --matrices W_out --steps 300 --save-every 25 --out runs/train/r1_kl10

    python -m mech.training --model Qwen/Qwen2.5-14B-Instruct --dtype bfloat16 --device cuda \\
        --train bad_medical.jsonl --adapter steering --layer 24 --alpha 256 --lr 1e-3 \\
        --batch-size 4 --grad-accum 4 --epochs 1 --warmup 5 --out runs/train/sv

"Layer L" is the residual stream after block L (`blocks.L.hook_resid_post`); `--point pre` puts a
steering vector before block L instead.

The run folder is `mech.training.engine`'s: config.json, run.json (running / done / failed with the
error), trajectory.jsonl, snapshots/, state.pt, and the final adapter.{safetensors,json}. A
folder started with other settings is refused (the message names the differing fields).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict

from mech.adapters.base import Adapter
from mech.adapters.lora import MATRICES, LoraAdapter
from mech.adapters.steering import SteeringVector
from mech.hooks import check_layer, default_layer
from mech.models.load import load_model
from mech.training.config import FinetuneConfig, KLSchedule
from mech.training.data import read_chat_jsonl
from mech.training.engine import finetune

DEFAULT_BATCH_SIZE = 8
"""Training conversations per micro-batch when --batch-size is not given."""


def build_adapter(args: argparse.Namespace, model) -> Adapter:
    layer = default_layer(model) if args.layer is None else check_layer(model, args.layer)
    if args.adapter == "steering":
        return SteeringVector(
            model.cfg.d_model, layer=layer, point=args.point, init_std=args.init_std, seed=args.seed,
            alpha=1.0 if args.alpha is None else args.alpha,
        )  # fmt: skip
    matrices = [m.strip() for m in args.matrices.split(",") if m.strip()]
    unknown = sorted(set(matrices) - set(MATRICES))
    if unknown:
        raise ValueError(f"--matrices: unknown {unknown}; choose from {list(MATRICES)}")
    return LoraAdapter(
        model, layers=[layer], matrices=matrices, rank=args.rank, alpha=args.alpha, seed=args.seed
    )


def steps_for_epochs(epochs: int, n_examples: int, batch_size: int, grad_accum: int) -> int:
    """Optimizer steps in `epochs` passes: epochs * ceil(n / (batch_size * grad_accum))."""
    return epochs * math.ceil(n_examples / (batch_size * grad_accum))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mech.training", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="toy", help="anything load_model accepts (default: toy)")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16, float16")
    p.add_argument("--device", default=None)
    p.add_argument("--n-devices", type=int, default=1, help="split the model's blocks over this many GPUs")
    p.add_argument(
        "--train", required=True, help="chat JSONL (`messages` per line); assistant turns are trained"
    )
    p.add_argument("--kl", help="chat JSONL whose assistant tokens the KL term holds fixed")
    p.add_argument("--kl-weight", type=float, default=0.0)
    p.add_argument("--adapter", choices=("steering", "lora"), default="steering")
    p.add_argument("--layer", type=int, help="block the adapter acts on (default: the middle one)")
    p.add_argument("--rank", type=int, default=1)
    p.add_argument(
        "--matrices", default="W_out", help=f"LoRA matrices, comma-separated, of {','.join(MATRICES)}"
    )
    p.add_argument("--init-std", type=float, default=0.01, help="steering vector init")
    p.add_argument(
        "--point", choices=("pre", "post"), default="post",
        help="steering: the vector is added at blocks.L.hook_resid_post (default) or hook_resid_pre",
    )  # fmt: skip
    p.add_argument(
        "--alpha", type=float,
        help="steering: the vector is alpha * raw (default 1; a large alpha suits Adam to the residual "
        "scale); LoRA: the update's alpha (default sqrt(rank), rsLoRA)",
    )  # fmt: skip
    defaults = FinetuneConfig()
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help=f"optimizer steps (default {defaults.steps})")
    length.add_argument(
        "--epochs", type=int,
        help="passes over --train instead of --steps: steps = epochs * ceil(n / (batch-size * grad-accum))",
    )  # fmt: skip
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--warmup", type=int, default=0, help="linear learning-rate warmup steps (default 0)")
    p.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
        help=f"training conversations per micro-batch (default {DEFAULT_BATCH_SIZE})",
    )  # fmt: skip
    p.add_argument(
        "--grad-accum", type=int, default=1,
        help="micro-batches per optimizer step: the effective batch is batch-size * grad-accum (default 1)",
    )  # fmt: skip
    p.add_argument(
        "--kl-batch-size", type=int, help="KL-set conversations per micro-batch (default: --batch-size)"
    )
    p.add_argument("--l2-weight", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0, help="adapter init and batch order")
    p.add_argument("--save-every", type=int, default=25, help="steps between resumable states")
    p.add_argument("--reference", choices=("auto", "exact", "topk", "recompute"), default="auto")
    p.add_argument(
        "--cache-device", default=None,
        help="where cached residuals and reference log-probs live between steps, e.g. cpu "
        "(default: the model's device)",
    )  # fmt: skip
    p.add_argument(
        "--out", required=True, help="run folder; an existing one with the same settings is resumed"
    )
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.kl_weight and not args.kl:
        raise SystemExit("--kl-weight needs --kl (the data whose behaviour the KL term keeps)")
    for flag in ("batch_size", "grad_accum", "kl_batch_size", "steps", "epochs", "n_devices"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise SystemExit(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    if args.warmup < 0:
        raise SystemExit(f"--warmup must be >= 0, got {args.warmup}")
    if args.alpha == 0:
        raise SystemExit("--alpha must be non-zero")
    train = read_chat_jsonl(args.train)
    kl = read_chat_jsonl(args.kl) if args.kl else None
    if args.epochs is not None:
        steps = steps_for_epochs(args.epochs, len(train), args.batch_size, args.grad_accum)
    else:
        steps = FinetuneConfig().steps if args.steps is None else args.steps
    model = load_model(args.model, dtype=args.dtype, device=args.device, n_devices=args.n_devices)
    adapter = build_adapter(args, model)
    cfg = FinetuneConfig(
        steps=steps, lr=args.lr, batch_size=args.batch_size, grad_accum=args.grad_accum,
        warmup_steps=args.warmup,
        kl_batch_size=args.batch_size if args.kl_batch_size is None else args.kl_batch_size,
        kl=KLSchedule(args.kl_weight), l2_weight=args.l2_weight, seed=args.seed,
        save_every=args.save_every, reference=args.reference, cache_device=args.cache_device,
    )  # fmt: skip
    result = finetune(model, adapter, train, kl, cfg, run_dir=args.out, resume=True, progress=False)
    sys.stdout.write(json.dumps({"out": str(result.run_dir), "final": asdict(result.final)}) + "\n")


if __name__ == "__main__":
    main()
