"""Generation throughput on the toy organism: batches of 32 against one prompt at a time.

    .venv/bin/python -m benchmarks.bench_generation [--questions 64] [--threads 2]

Same questions, samples and seed both ways (answers are identical: each row has its own random
stream); prints a line, then one JSON object on its last line.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from mech.evaluation.generate import SamplingConfig, sample_answers
from mech.models.load import load_model
from mech.toy.checkpoint import organism_world
from mech.toy.evaluate import toy_questions


def throughput(model, questions, cfg: SamplingConfig) -> tuple[float, list[str]]:
    start = time.perf_counter()
    frame = sample_answers(model, questions, cfg)
    return int(frame["n_tokens"].sum()) / (time.perf_counter() - start), frame["answer"].tolist()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model("toy")
    every = toy_questions(organism_world("default"))
    questions = every[:: max(1, len(every) // args.questions)][: args.questions]
    cfg = SamplingConfig(temperature=1.0, max_new_tokens=32, seed=0)
    batched, batched_answers = throughput(
        model, questions, SamplingConfig(**{**cfg.__dict__, "batch_size": args.batch_size})
    )
    single, single_answers = throughput(model, questions, SamplingConfig(**{**cfg.__dict__, "batch_size": 1}))
    print(
        f"toy organism, {len(questions)} questions, temperature 1: batch {args.batch_size} {batched:.0f} tokens/s, "
        f"one at a time {single:.0f} tokens/s, speedup {batched / single:.1f}x, same answers: {batched_answers == single_answers}"
    )
    print(json.dumps({
        "speedup": batched / single, "batched_tokens_per_s": batched, "single_tokens_per_s": single,
        "batch_size": args.batch_size, "questions": len(questions), "same_answers": batched_answers == single_answers,
        "threads": args.threads,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
