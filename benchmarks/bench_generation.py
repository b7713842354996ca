"""Generation throughput on the toy organism: batches of 32 against one prompt at a time.

    .venv/bin/python -m benchmarks.bench_generation [--questions 64] [--threads 2]

Same questions, samples and seed both ways (answers are identical: each row's noise is a function
of its own key and step). Also the sampler step at Qwen's vocabulary against the previous one
(`sampler_speedup_152k`) and our tokens/s against Hugging Face `generate`'s on a tiny Qwen2
(`vs_hf_generate`). Prints two lines, then one JSON object on its last line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time

import torch

from mech.evaluation.generate import SamplingConfig, _choose, generate_batch, sample_answers
from mech.evaluation.gumbel import RowNoise, row_key
from mech.models.load import load_model
from mech.toy.checkpoint import organism_world
from mech.toy.evaluate import toy_questions


def throughput(model, questions, cfg: SamplingConfig) -> tuple[float, list[str]]:
    start = time.perf_counter()
    frame = sample_answers(model, questions, cfg)
    return int(frame["n_tokens"].sum()) / (time.perf_counter() - start), frame["answer"].tolist()


def _row_generator(
    seed: int, question_id: str, sample: int, device: str | torch.device = "cpu"
) -> torch.Generator:
    """The per-row random stream of the previous sampler (kept for its baseline below)."""
    digest = hashlib.sha256(f"{seed}\0{question_id}\0{sample}".encode()).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def previous_choose(logits: torch.Tensor, temperature: float, generators) -> torch.Tensor:
    """The previous sampler step, the baseline of `sampler_speedup_152k`: one torch.Generator per
    row on the model's device, a vocabulary-sized torch.rand from each in a python loop, stacked."""
    if temperature == 0:
        return logits.argmax(-1)
    device = generators[0].device
    dtype = torch.float32 if device.type == "mps" else torch.float64
    uniform = torch.stack(
        [torch.rand(logits.shape[-1], generator=g, dtype=dtype, device=device) for g in generators]
    )
    floor = 1e-300 if dtype == torch.float64 else torch.finfo(dtype).tiny
    gumbel = -torch.log(-torch.log(uniform.clamp_min(floor)))
    return (logits.to(device, dtype) / temperature + gumbel).argmax(-1).to(logits.device)


def sampler_speedup(batch: int, d_vocab: int = 152064, steps: int = 10) -> float:
    """The counter-based sampler step over the previous one at Qwen's vocabulary: same logits,
    same batch, each with the state it keeps between steps (generators; buffers and row keys)."""
    logits = torch.randn(batch, d_vocab, generator=torch.Generator().manual_seed(0))
    generators = [_row_generator(0, f"q{i}", 0) for i in range(batch)]
    noise = RowNoise([row_key(0, f"q{i}", 0) for i in range(batch)], d_vocab, logits.device)
    steppers = {
        "now": lambda step: _choose(logits, 1.0, noise, step),
        "before": lambda _: previous_choose(logits, 1.0, generators),
    }
    times = dict.fromkeys(steppers, 0.0)
    for name, stepper in steppers.items():  # warm-up: first-touch of buffers and allocator
        stepper(0)
    for step in range(steps):  # interleaved, so neither gets a warmer machine
        for name, stepper in steppers.items():
            start = time.perf_counter()
            stepper(step)
            times[name] += time.perf_counter() - start
    return times["before"] / times["now"]


def versus_hf_generate(batch: int, new_tokens: int, repeats: int = 7) -> dict:
    """Our sampler's tokens/s over Hugging Face `generate`'s (sampling at temperature 1, no stop
    token) on the same tiny random-weight Qwen2 checkpoint, batch and prompts; the best of
    `repeats` interleaved runs each, after a warm-up run."""
    import tempfile
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    from mech.models.tiny_checkpoints import write_tiny_checkpoint

    path = write_tiny_checkpoint("qwen2", Path(tempfile.mkdtemp()) / "Qwen2.5-tiny", n_layers=4, d_model=64)
    ours = load_model(path)
    hf = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa").eval()
    prompts = torch.randint(8, ours.cfg.d_vocab, (batch, 16), generator=torch.Generator().manual_seed(0))
    keys = [row_key(0, f"q{i}", 0) for i in range(batch)]

    def run_ours() -> None:
        generate_batch(ours, prompts.tolist(), keys, temperature=1.0, max_new_tokens=new_tokens, stop_ids=[])

    @torch.no_grad()
    def run_hf() -> None:
        hf.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=True, temperature=1.0, top_k=0,
                    max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)  # fmt: skip

    seconds = {"ours": [], "hf": []}
    for run in (run_ours, run_hf):
        run()
    for _ in range(repeats):
        for name, run in (("ours", run_ours), ("hf", run_hf)):
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    ours_rate, hf_rate = (batch * new_tokens / min(seconds[name]) for name in ("ours", "hf"))
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
    sampler_ratio = sampler_speedup(args.batch_size)
    hf = versus_hf_generate(args.batch_size, 32)
    print(
        f"sampler step at vocabulary 152064, batch {args.batch_size}: {sampler_ratio:.2f}x the previous one; "
        f"tiny Qwen2, batch {args.batch_size}, 32 new tokens: ours "
        f"{hf['ours_tokens_per_s']:.0f} tokens/s, HF generate {hf['hf_generate_tokens_per_s']:.0f} tokens/s"
    )
    print(json.dumps({
        "speedup": batched / single, "batched_tokens_per_s": batched, "single_tokens_per_s": single,
        "batch_size": args.batch_size, "questions": len(questions), "same_answers": batched_answers == single_answers,
        "threads": args.threads, "sampler_speedup_152k": sampler_ratio,
        "vs_hf_generate": hf["ratio"], "hf": hf,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
