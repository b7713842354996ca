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

from mech.evaluation.generate import SamplingConfig, _choose, _row_generator, sample_answers
from mech.models.load import load_model
from mech.toy.checkpoint import organism_world
from mech.toy.evaluate import toy_questions


def throughput(model, questions, cfg: SamplingConfig) -> tuple[float, list[str]]:
    start = time.perf_counter()
    frame = sample_answers(model, questions, cfg)
    return int(frame["n_tokens"].sum()) / (time.perf_counter() - start), frame["answer"].tolist()


def previous_choose(logits: torch.Tensor, temperature: float, generators) -> torch.Tensor:
    """The sampler step before the noise moved to the model's device: noise on the host, logits
    brought to it (kept here as the baseline of `sampler_speedup_152k`)."""
    uniform = torch.stack(
        [torch.rand(logits.shape[-1], generator=g, dtype=torch.float64) for g in generators]
    )
    gumbel = -torch.log(-torch.log(uniform.clamp_min(1e-300)))
    return (logits.double().cpu() / temperature + gumbel).argmax(-1).to(logits.device)


def sampler_speedup(batch: int, d_vocab: int = 152064, steps: int = 10) -> tuple[float, bool]:
    """Today's sampler step over the previous one at Qwen's vocabulary, same logits and streams
    (on CPU, the model's device here, both draw on the host: the ratio is about 1)."""
    logits = torch.randn(batch, d_vocab)
    times, chosen = {"now": 0.0, "before": 0.0}, {"now": [], "before": []}
    streams = {name: [_row_generator(0, f"q{i}", 0) for i in range(batch)] for name in times}
    previous_choose(logits, 1.0, [_row_generator(1, "warm-up", 0)] * batch)  # allocator warm-up
    for _ in range(steps):  # interleaved, so neither gets a warmer machine
        for name, choose in (("now", _choose), ("before", previous_choose)):
            start = time.perf_counter()
            chosen[name].append(choose(logits, 1.0, streams[name]))
            times[name] += time.perf_counter() - start
    same = all(torch.equal(a, b) for a, b in zip(chosen["now"], chosen["before"], strict=True))
    return times["before"] / times["now"], same


def versus_hf_generate(batch: int, new_tokens: int) -> dict:
    """Our sampler's tokens/s over Hugging Face `generate`'s (sampling, no stop token) on the same
    tiny random-weight Qwen2 checkpoint, batch and prompts."""
    import tempfile
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    from mech.evaluation.generate import generate_batch
    from mech.models.tiny_checkpoints import write_tiny_checkpoint

    path = write_tiny_checkpoint("qwen2", Path(tempfile.mkdtemp()) / "Qwen2.5-tiny", n_layers=4, d_model=64)
    ours = load_model(path)
    hf = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa").eval()
    prompts = torch.randint(8, ours.cfg.d_vocab, (batch, 16), generator=torch.Generator().manual_seed(0))
    generators = [_row_generator(0, f"q{i}", 0) for i in range(batch)]
    start = time.perf_counter()
    generate_batch(
        ours, prompts.tolist(), generators, temperature=1.0, max_new_tokens=new_tokens, stop_ids=[]
    )
    ours_rate = batch * new_tokens / (time.perf_counter() - start)
    start = time.perf_counter()
    with torch.no_grad():
        hf.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=True, temperature=1.0, top_k=0,
                    max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)  # fmt: skip
    hf_rate = batch * new_tokens / (time.perf_counter() - start)
    return {"ours_tokens_per_s": ours_rate, "hf_generate_tokens_per_s": hf_rate, "ratio": ours_rate / hf_rate}


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
    sampler_ratio, sampler_same = sampler_speedup(args.batch_size)
    hf = versus_hf_generate(args.batch_size, 32)
    print(
        f"sampler step at vocabulary 152064, batch {args.batch_size}: {sampler_ratio:.2f}x the previous one "
        f"(same tokens: {sampler_same}); tiny Qwen2, batch {args.batch_size}, 32 new tokens: ours "
        f"{hf['ours_tokens_per_s']:.0f} tokens/s, HF generate {hf['hf_generate_tokens_per_s']:.0f} tokens/s"
    )
    print(json.dumps({
        "speedup": batched / single, "batched_tokens_per_s": batched, "single_tokens_per_s": single,
        "batch_size": args.batch_size, "questions": len(questions), "same_answers": batched_answers == single_answers,
        "threads": args.threads, "sampler_speedup_152k": sampler_ratio, "sampler_same_tokens": sampler_same,
        "vs_hf_generate": hf["ratio"], "hf": hf,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
