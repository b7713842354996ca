"""The GPU suite: one command for a lent device, one JSON file out. It runs on CPU with tiny shapes
too (`--tiny`, in the tests), so it works the first time a device is lent.

    python -m benchmarks.gpu_suite --out gpu_suite.json            # on the device: bf16, CUDA
    python -m benchmarks.gpu_suite --tiny --out F.json             # on CPU, tiny shapes (seconds)

What it measures, on random-weight models with Qwen2.5 shapes (`benchmarks.memory.shapes`: the
config `load_model` builds for a Qwen2 checkpoint):
- `matmul_peak_tflops`: the device's bf16 matmul rate, measured (the MFU denominator);
- per model (`14b`: Qwen2.5-14B's 48 layers, `0.5b`: Qwen2.5-0.5B's shapes; tiny shapes with
  `--tiny`): the engine's training step (`mech.training.engine._step`: rank-1 LoRA on the middle
  block, CE + top-k KL, batches of `--batch` x `--seq` each) as steps/s, tokens/s and MFU (model
  FLOPs below), its peak memory against the formula's prediction (`benchmarks.memory.formula`); the
  sampler (`mech.evaluation.generate.generate_batch`, temperature 1, no stop token, so every row
  runs `--new-tokens`) as tokens/s at two batch sizes; and forward + backward of a few blocks,
  ours against the same weights in Hugging Face transformers with sdpa attention, as a ratio.

Model FLOPs of a step (the MFU numerator): 2 x the parameters above the adapter x the tokens of
both batches for the forward, the same again for the backward through the frozen blocks (input
gradients only: no weight gradients are needed), and 4 x d_model x d_vocab per predicted token for
the head. Attention's own FLOPs are left out (small at 256 tokens).

Each section is timed with warm-up first and synchronised; the whole suite is meant to take a few
minutes on one H100. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformer_lens import HookedTransformer

from benchmarks.memory.counting import AllocationTracker
from benchmarks.memory.formula import Batch, adapter_state_bytes, estimate_step, reference_bytes_per_token
from benchmarks.memory.measure import chat_sets
from benchmarks.memory.shapes import GIB, QWEN25_14B, TOPK, Shape, dtype_bytes, make_adapter, qwen2_model

QWEN25_05B = Shape("Qwen2.5-0.5B-Instruct", 24, 896, 4864, 14, 2, 64, 151936)
TINY_SHAPES = {
    "14b": Shape("tiny (14B-like head ratios)", 4, 64, 160, 4, 2, 16, 512),
    "0.5b": Shape("tiny (0.5B-like)", 2, 32, 96, 2, 1, 16, 256),
}
DEVICE_SHAPES = {"14b": QWEN25_14B, "0.5b": QWEN25_05B}
KEYS = ("device", "train_steps_per_s", "mfu", "peak_gib", "predicted_gib", "sample_tokens_per_s")
"""The keys every run writes, on a device or with `--tiny`."""


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str, *, repeats: int, warmup: int = 1) -> float:
    """Seconds per call of `fn`, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / repeats


def matmul_peak_tflops(device: str, dtype: torch.dtype, n: int) -> float:
    """The best of a few runs of an n x n x n matmul, in TFLOP/s."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    seconds = min(timed(lambda: a @ b, device, repeats=5) for _ in range(3))
    return 2 * n**3 / seconds / 1e12


def step_flops(shape: Shape, train: Batch, kl: Batch) -> float:
    """Model FLOPs of one training step (see the module docstring)."""
    upper = (shape.n_layers - shape.layer) * shape.block_params()
    tokens = train.tokens + kl.tokens
    head = 4 * shape.d_model * shape.d_vocab * (train.targets + kl.targets)
    return 2 * 2 * upper * tokens + head


def predicted_bytes(shape: Shape, s: int, train: Batch, kl: Batch) -> float:
    """The formula's peak for this suite's step: weights, adapter state, the two batches' cached
    residuals and top-k reference, and the step's working memory."""
    cached = (train.tokens + kl.tokens) * shape.d_model * s + kl.targets * reference_bytes_per_token(
        shape, "topk"
    )
    step = estimate_step(shape, "lora_r1", s, train, kl)["total"]
    return shape.params() * s + adapter_state_bytes(shape, "lora_r1") + cached + step


def training(model: HookedTransformer, shape: Shape, train: Batch, kl: Batch, *, repeats: int) -> dict:
    """Steps/s, tokens/s, MFU inputs and peak memory of the engine's step."""
    from mech.training.cached_set import CachedChatSet
    from mech.training.config import FinetuneConfig, KLSchedule
    from mech.training.engine import _step

    device = model.cfg.device
    adapter = make_adapter("lora_r1", model, shape.layer).to(device)
    site = adapter.entry(model)
    batches, residuals = chat_sets(model, train, kl)
    train_set, kl_set = (
        CachedChatSet([b], [r], site, name, name) for b, r, name in zip(batches, residuals, ("train", "kl"))
    )
    logprobs = torch.randn(kl_set.n_targets(), model.cfg.d_vocab, device=device).log_softmax(-1)
    kl_set.references, kl_set.reference_mode = (
        [torch.topk(logprobs, min(TOPK, model.cfg.d_vocab))],
        ("topk", TOPK),
    )
    del logprobs
    cfg = FinetuneConfig(lr=1e-3, kl=KLSchedule(1.0), reference="topk")
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=cfg.lr)
    step = [0]

    def one() -> None:
        _step(model, adapter, optimizer, train_set, kl_set, cfg, step[0])
        step[0] += 1

    one()  # AdamW creates its state: the peak of later steps includes it
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        seconds = timed(one, device, repeats=repeats)
        peak = torch.cuda.max_memory_allocated()
    else:
        seconds = timed(one, device, repeats=repeats)
        tracker = AllocationTracker()
        with tracker:
            one()
        resident = [*model.parameters(), *residuals, *kl_set.references[0], *adapter.parameters()]
        peak = tracker.peak + sum(t.numel() * t.element_size() for t in resident)
    return {"seconds_per_step": seconds, "tokens_per_step": train.tokens + kl.tokens, "peak_bytes": peak}


def sampling(model: HookedTransformer, batch: int, prompt_len: int, new_tokens: int) -> float:
    """Generated tokens/s of the sampler at `batch` rows (temperature 1, no stop token)."""
    from mech.evaluation.generate import generate_batch
    from mech.evaluation.gumbel import row_key

    generator = torch.Generator().manual_seed(0)
    prompts = torch.randint(8, model.cfg.d_vocab, (batch, prompt_len), generator=generator).tolist()
    keys = [row_key(0, f"q{i}", 0) for i in range(batch)]

    def run() -> list:
        return generate_batch(model, prompts, keys, temperature=1.0, max_new_tokens=new_tokens, stop_ids=[])

    seconds = timed(run, model.cfg.device, repeats=1, warmup=0)
    return batch * new_tokens / seconds


def hf_block_ratio(shape: Shape, *, n_blocks: int, tokens: Batch, dtype: torch.dtype, device: str) -> dict:
    """Forward + backward of an `n_blocks`-layer model of `shape`, ours against the same weights in
    Hugging Face transformers (sdpa attention): seconds each and ours / theirs. The blocks' weights
    take gradients, embeddings and unembedding do not; the loss is the mean logit."""
    from transformer_lens.pretrained.weight_conversions import convert_qwen2_weights
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from mech._quiet import quiet_deprecation
    from mech.models.load import LoadingFlags

    small = Shape(shape.name, n_blocks, shape.d_model, shape.d_mlp, shape.n_heads, shape.n_kv_heads,
                  shape.d_head, shape.d_vocab)  # fmt: skip
    ours = qwen2_model(small, dtype=dtype, device=device)
    hf_config = Qwen2Config(
        vocab_size=small.d_vocab, hidden_size=small.d_model, intermediate_size=small.d_mlp,
        num_hidden_layers=n_blocks, num_attention_heads=small.n_heads, num_key_value_heads=small.n_kv_heads,
        max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=False,
    )  # fmt: skip
    hf_config._attn_implementation = "sdpa"
    with torch.device(device):
        theirs = Qwen2ForCausalLM(hf_config).to(dtype)
    with quiet_deprecation():
        ours.load_and_process_state_dict(convert_qwen2_weights(theirs, ours.cfg), **LoadingFlags().to_dict())
    ids = torch.randint(
        8, small.d_vocab, (tokens.batch, tokens.seq), generator=torch.Generator().manual_seed(1)
    )
    ids = ids.to(device)
    for model, blocks in ((ours, ours.blocks), (theirs, theirs.model.layers)):
        model.requires_grad_(False)
        blocks.requires_grad_(True)

    def step(forward: Callable[[], torch.Tensor], model: torch.nn.Module) -> None:
        model.zero_grad(set_to_none=True)
        forward().float().mean().backward()

    with torch.no_grad():
        agree = float((ours(ids) - theirs(ids).logits).abs().max())
    ours_s = timed(lambda: step(lambda: ours(ids), ours), device, repeats=3)
    theirs_s = timed(lambda: step(lambda: theirs(ids).logits, theirs), device, repeats=3)
    return {"blocks": n_blocks, "ours_s": ours_s, "hf_sdpa_s": theirs_s, "ratio": ours_s / theirs_s,
            "max_logit_diff": agree}  # fmt: skip


def run_model(
    label: str, shape: Shape, args: argparse.Namespace, dtype: torch.dtype, peak_tflops: float
) -> dict:
    device, s = args.device, torch.empty((), dtype=dtype).element_size()
    batch = Batch(args.batch, args.seq, args.seq // 2)
    model = qwen2_model(shape, dtype=dtype, device=device)
    model.tokenizer = _pad_only_tokenizer()
    assert dtype_bytes(model) == s
    train = training(model, shape, batch, batch, repeats=args.train_repeats)
    flops = step_flops(shape, batch, batch)
    out = {
        "shape": shape.__dict__, "layer": shape.layer, "adapter": "lora_r1", "batch": batch.label(),
        "train_steps_per_s": 1 / train["seconds_per_step"],
        "train_tokens_per_s": train["tokens_per_step"] / train["seconds_per_step"],
        "step_tflop": flops / 1e12, "mfu": flops / train["seconds_per_step"] / (peak_tflops * 1e12),
        "peak_gib": train["peak_bytes"] / GIB, "predicted_gib": predicted_bytes(shape, s, batch, batch) / GIB,
        "sample_new_tokens": args.new_tokens,
        "sample_tokens_per_s": {str(b): sampling(model, b, args.prompt_len, args.new_tokens) for b in args.sample_batches},
    }  # fmt: skip
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    out["vs_hf"] = hf_block_ratio(shape, n_blocks=args.hf_blocks, tokens=batch, dtype=dtype, device=device)
    return {label: out}


def _pad_only_tokenizer():
    """The sampler pads prompts: a word-level tokenizer whose pad id is 0 (the prompts are ids)."""
    from mech.models.tokenizer import word_level_tokenizer

    return word_level_tokenizer([], special_tokens=["<pad>", "<unk>"], chat_template="", bos_token=None,
                                eos_token="<pad>", pad_token="<pad>", unk_token="<unk>")  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="the JSON file to write")
    parser.add_argument(
        "--tiny", action="store_true", help="tiny shapes on CPU in float32 (seconds; the tests)"
    )
    parser.add_argument("--device", help="default: cuda if available, else cpu")
    parser.add_argument("--models", default="14b,0.5b", help="comma-separated, of 14b and 0.5b")
    parser.add_argument("--batch", type=int, help="conversations per batch (default 2; tiny 2)")
    parser.add_argument("--seq", type=int, help="tokens per conversation (default 256; tiny 16)")
    parser.add_argument(
        "--sample-batches", help="comma-separated sampler batch sizes (default 64,400; tiny 2,4)"
    )
    parser.add_argument(
        "--new-tokens", type=int, help="tokens each sampled row generates (default 64; tiny 4)"
    )
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--train-repeats", type=int, help="timed training steps (default 10; tiny 2)")
    parser.add_argument("--hf-blocks", type=int, help="blocks in the HF comparison (default 4; tiny 2)")
    args = parser.parse_args(argv)
    device_default = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    defaults = dict(device=device_default, batch=2, seq=16 if args.tiny else 256, new_tokens=4 if args.tiny else 64,
                    train_repeats=2 if args.tiny else 10, hf_blocks=2 if args.tiny else 4,
                    sample_batches="2,4" if args.tiny else "64,400")  # fmt: skip
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.sample_batches = [int(b) for b in str(args.sample_batches).split(",")]
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in DEVICE_SHAPES]
    if unknown:
        parser.error(f"--models: unknown {unknown}; choose from {', '.join(DEVICE_SHAPES)}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    dtype = torch.float32 if args.tiny else torch.bfloat16
    device = args.device
    name = (
        torch.cuda.get_device_name(device)
        if device.startswith("cuda")
        else f"cpu ({platform.processor() or platform.machine()})"
    )
    started = time.perf_counter()
    peak = matmul_peak_tflops(device, dtype, 256 if args.tiny else 8192)
    shapes = TINY_SHAPES if args.tiny else DEVICE_SHAPES
    results: dict = {"device": name, "dtype": str(dtype), "torch": torch.__version__, "tiny": args.tiny,
                     "matmul_peak_tflops": peak, "models": {}}  # fmt: skip
    for label in args.models:
        results["models"].update(run_model(label, shapes[label], args, dtype, peak))
    first = results["models"][args.models[0]]
    for key in KEYS[1:]:  # the headline keys, from the first model (14b by default)
        results[key] = first[key]
    results["seconds"] = time.perf_counter() - started
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps({k: results[k] for k in KEYS}))  # noqa: T201 (a script's output)
    return results


if __name__ == "__main__":
    main()
