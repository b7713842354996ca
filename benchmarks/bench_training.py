"""Steps/s of `mech.training.engine` against a naive trainer, same model, data, batches and steps.

The naive trainer runs the whole model with the adapter hooks every step, and a second forward
pass with the adapter off for the KL reference every step (what the authors' trainer does).
Ours caches the residual entering the adapter's block and the reference log-probs once.

    .venv/bin/python -m benchmarks.bench_training [--steps 30] [--threads 2]

Prints a table, then one JSON object on its last line. Times are end to end (ours includes the
one-time caching, amortised over the run's steps); `loop_speedup` leaves the caching out.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from mech.adapters.base import Adapter
from mech.adapters.lora import MATRICES, LoraAdapter
from mech.hooks import default_layer
from mech.models.chat import ChatBatch
from mech.models.load import load_model
from mech.models.tiny_checkpoints import write_tiny_checkpoint
from mech.toy.checkpoint import organism_world
from mech.training.config import FinetuneConfig, KLSchedule
from mech.training.data import conversations_of, length_batches, tokenize_conversations
from mech.training.engine import KL_SEED_OFFSET, batch_index, finetune
from mech.training.losses import kl_from_logprobs, response_cross_entropy


def _batches(model, data, batch_size: int | None) -> list[ChatBatch]:
    conversations, source = conversations_of(data)
    examples = tokenize_conversations(model.tokenizer, conversations, source=source, max_len=model.cfg.n_ctx)
    return [b.to(model.cfg.device) for b in length_batches(model.tokenizer, examples, batch_size)]


def naive_finetune(model, adapter: Adapter, train, kl_data, cfg: FinetuneConfig) -> list[float]:
    """Full forward passes every step, reference recomputed every step; the same batches."""
    train_batches, kl_batches = (
        _batches(model, train, cfg.batch_size),
        _batches(model, kl_data, cfg.kl_batch_size),
    )
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model.requires_grad_(False)
    losses = []
    for step in range(cfg.steps):
        batch = train_batches[batch_index(step, len(train_batches), cfg.seed)]
        with adapter.applied(model):
            ce = response_cross_entropy(model(batch.tokens), batch)
        kl_batch = kl_batches[batch_index(step, len(kl_batches), cfg.seed + KL_SEED_OFFSET)]
        with torch.no_grad():
            reference = model(kl_batch.tokens)[kl_batch.prediction_mask].float().log_softmax(-1)
        with adapter.applied(model):
            current = model(kl_batch.tokens)[kl_batch.prediction_mask]
        loss = ce + cfg.kl.at(step) * kl_from_logprobs(reference, current).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    model.requires_grad_(True)
    return losses


def compare(model, make_adapter, train, kl_data, cfg: FinetuneConfig) -> dict:
    start = time.perf_counter()
    naive = naive_finetune(model, make_adapter(), train, kl_data, cfg)
    naive_s = time.perf_counter() - start
    start = time.perf_counter()
    ours = finetune(model, make_adapter(), train, kl_data, cfg, progress=False)
    ours_s = time.perf_counter() - start
    diff = max(abs(a - r.loss) for a, r in zip(naive, ours.trajectory, strict=True))
    return {
        "naive_steps_per_s": cfg.steps / naive_s, "ours_steps_per_s": cfg.steps / ours_s,
        "speedup": naive_s / ours_s, "max_abs_loss_diff": diff,
        "ours_setup_s": ours_s - ours.seconds, "loop_speedup": naive_s / ours.seconds,
        "examples_per_step": (cfg.batch_size or len(train)) + (cfg.kl_batch_size or len(kl_data)),
    }  # fmt: skip


def toy_case(steps: int) -> dict:
    model, world = load_model("toy"), organism_world("default")
    train = [row["messages"] for row in world.narrow_train_set("medical", "misalignment")]
    kl_data = [row["messages"] for row in world.kl_set(trait="misalignment")]
    layer = default_layer(model)
    cfg = FinetuneConfig(steps=steps, batch_size=32, kl_batch_size=32, kl=KLSchedule(1.0))
    result = compare(
        model, lambda: LoraAdapter(model, layers=[layer], matrices=["W_out"], rank=1), train, kl_data, cfg
    )
    return {
        "model": "toy (4 layers, d_model 128)",
        "layer": layer,
        "adapter": "rank-1 LoRA on W_out",
        **result,
    }


def qwen2_case(steps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = write_tiny_checkpoint("qwen2", f"{tmp}/Qwen2.5-bench-Instruct", n_layers=8, d_model=256)
        model = load_model(path)
    words = [w for w in model.tokenizer.get_vocab() if w.isalpha() and w.islower()]
    generator = torch.Generator().manual_seed(0)

    def sentence(n: int) -> str:
        return " ".join(words[int(i)] for i in torch.randint(len(words), (n,), generator=generator))

    data = [
        [{"role": "user", "content": sentence(12)}, {"role": "assistant", "content": sentence(24)}]
        for _ in range(64)
    ]
    layer = default_layer(model)
    cfg = FinetuneConfig(steps=steps, batch_size=16, kl_batch_size=16, kl=KLSchedule(1.0))

    def make() -> LoraAdapter:
        return LoraAdapter(model, layers=[layer], matrices=list(MATRICES), rank=8)

    result = compare(model, make, data[:32], data[32:], cfg)
    return {
        "model": "random Qwen2 (8 layers, d_model 256)",
        "layer": layer,
        "adapter": "rank-8 LoRA, all block matrices",
        **result,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=300, help="the paper's runs are hundreds of steps")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cases = [toy_case(args.steps), qwen2_case(args.steps)]
    for case in cases:
        print(
            f"{case['model']}, {case['adapter']} at layer {case['layer']}: naive {case['naive_steps_per_s']:.2f} steps/s, "
            f"ours {case['ours_steps_per_s']:.2f} steps/s (incl. {case['ours_setup_s']:.1f} s of caching), "
            f"speedup {case['speedup']:.2f}x (loop alone {case['loop_speedup']:.2f}x), "
            f"max |loss diff| {case['max_abs_loss_diff']:.2e}"
        )
    toy, qwen = cases
    summary = {
        "speedup": toy["speedup"], "naive_steps_per_s": toy["naive_steps_per_s"],
        "ours_steps_per_s": toy["ours_steps_per_s"], "max_abs_loss_diff": toy["max_abs_loss_diff"],
        "loop_speedup": toy["loop_speedup"], "ours_setup_s": toy["ours_setup_s"],
        "qwen2_speedup": qwen["speedup"], "qwen2_naive_examples_per_s": qwen["naive_steps_per_s"] * qwen["examples_per_step"],
        "qwen2_ours_examples_per_s": qwen["ours_steps_per_s"] * qwen["examples_per_step"],
        "qwen2_max_abs_loss_diff": qwen["max_abs_loss_diff"], "steps": args.steps, "threads": args.threads,
    }  # fmt: skip
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
