"""Host memory of loading a local bf16 checkpoint: layer by layer versus through the whole HF model.

    .venv/bin/python -m benchmarks.bench_loading [--layers 1 3] [--vocab 16384]

Writes random-weight bf16 Qwen2 checkpoints with Qwen2.5-14B's block shapes (d_model 5120, d_mlp
13824, 40 heads, 8 key-value heads, d_head 128), few layers and a small vocabulary (one
safetensors shard per layer, with an index) to a temporary directory, deleted afterwards. Each
(path, layers) case loads with `load_model(dir, dtype="bfloat16", device="cpu")` in a fresh child
process, which reports its peak RSS (`ru_maxrss`) after the load minus its peak after its imports.
The peak's growth per layer, (peak(more layers) - peak(fewer)) / (layer difference), over one
layer's bf16 weight bytes is the number of copies of the weights held at the peak. Prints a table,
then one JSON object on its last line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # the children import no more than they need before their baseline
    from benchmarks.memory.shapes import Shape

PATHS = ("whole_hf_model", "layer_by_layer")
MIB = 2**20
_CHILD_FLAG = "--child"


def layer_tensors(shape: Shape, layer: int) -> dict[str, tuple[int, ...]]:
    """HF names and shapes of one Qwen2 decoder layer's weights."""
    q, kv, d, prefix = (
        shape.n_heads * shape.d_head,
        shape.n_kv_heads * shape.d_head,
        shape.d_model,
        f"model.layers.{layer}.",
    )
    return {
        f"{prefix}input_layernorm.weight": (d,), f"{prefix}post_attention_layernorm.weight": (d,),
        f"{prefix}self_attn.q_proj.weight": (q, d), f"{prefix}self_attn.q_proj.bias": (q,),
        f"{prefix}self_attn.k_proj.weight": (kv, d), f"{prefix}self_attn.k_proj.bias": (kv,),
        f"{prefix}self_attn.v_proj.weight": (kv, d), f"{prefix}self_attn.v_proj.bias": (kv,),
        f"{prefix}self_attn.o_proj.weight": (d, q), f"{prefix}mlp.gate_proj.weight": (shape.d_mlp, d),
        f"{prefix}mlp.up_proj.weight": (shape.d_mlp, d), f"{prefix}mlp.down_proj.weight": (d, shape.d_mlp),
    }  # fmt: skip


def layer_bytes(shape: Shape) -> int:
    """One decoder layer's weights in bf16, as the checkpoint stores them."""
    return 2 * sum(torch.Size(s).numel() for s in layer_tensors(shape, 0).values())


def _write_shard(file: Path, shapes: dict[str, tuple[int, ...]], generator: torch.Generator) -> None:
    from safetensors.torch import save_file

    tensors = {
        name: (0.02 * torch.randn(s, generator=generator)).to(torch.bfloat16) for name, s in shapes.items()
    }
    save_file(tensors, str(file), metadata={"format": "pt"})


def write_checkpoints(root: Path, shape: Shape, layer_counts: list[int], n_ctx: int) -> dict[int, Path]:
    """One checkpoint directory per layer count; they share the shard files (hard links)."""
    from transformers import Qwen2Config

    from mech.models.tiny_checkpoints import tiny_tokenizer

    shards = root / "shards"
    shards.mkdir()
    generator = torch.Generator().manual_seed(0)
    outside = {"model.embed_tokens.weight": (shape.d_vocab, shape.d_model), "model.norm.weight": (shape.d_model,),
               "lm_head.weight": (shape.d_vocab, shape.d_model)}  # fmt: skip
    _write_shard(shards / "outside.safetensors", outside, generator)
    for layer in range(max(layer_counts)):
        _write_shard(shards / f"layer-{layer}.safetensors", layer_tensors(shape, layer), generator)
    tokenizer = tiny_tokenizer("qwen2")
    paths = {}
    for n_layers in layer_counts:
        path = root / f"Qwen2.5-14B-shapes-{n_layers}-layers"
        config = Qwen2Config(
            vocab_size=shape.d_vocab, hidden_size=shape.d_model, intermediate_size=shape.d_mlp,
            num_hidden_layers=n_layers, num_attention_heads=shape.n_heads, num_key_value_heads=shape.n_kv_heads,
            max_position_embeddings=n_ctx, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=False,
            architectures=["Qwen2ForCausalLM"], dtype="bfloat16",
        )  # fmt: skip
        config.save_pretrained(path)
        tokenizer.save_pretrained(path)
        weight_map = {}
        for name, shard in [("outside", outside)] + [
            (f"layer-{i}", layer_tensors(shape, i)) for i in range(n_layers)
        ]:
            file = f"{name}.safetensors"
            os.link(shards / file, path / file)
            weight_map.update(dict.fromkeys(shard, file))
        (path / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {}, "weight_map": weight_map})
        )
        paths[n_layers] = path
    return paths


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def _rss_bytes() -> int:
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) * 1024


def child(path: Path, how: str) -> None:
    """In a fresh process: load `path` one way and print the peak RSS it added."""
    import transformers.models.qwen2.modeling_qwen2  # noqa: F401  (imported before the baseline)

    from mech._quiet import quiet_hf
    from mech.models import load

    before, peak_before = _rss_bytes(), _peak_rss_bytes()
    start = time.perf_counter()
    with quiet_hf():
        model = load._load_local(
            path.resolve(), None, load.LoadingFlags(), "cpu", torch.bfloat16, None,
            via_hf_model=how == "whole_hf_model",
        )  # fmt: skip
    wall = time.perf_counter() - start
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    peak = _peak_rss_bytes()
    if peak <= peak_before:  # the imports' transient peak was higher: the load's is unknown
        raise RuntimeError(f"the load did not raise the peak RSS ({peak_before} bytes after the imports)")
    print(json.dumps({"peak_bytes": peak - before, "wall_s": wall, "param_bytes": params,
                      "rss_after_imports": before, "peak_after_imports": peak_before}))  # fmt: skip


def measure(path: Path, how: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_loading", _CHILD_FLAG, str(path), how],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, nargs=2, default=[1, 3], metavar=("FEWER", "MORE"))
    parser.add_argument("--vocab", type=int, default=16384)
    parser.add_argument(
        "--n-ctx", type=int, default=2048, help="max_position_embeddings (sets TL's rotary tables)"
    )
    args = parser.parse_args(argv)
    from benchmarks.memory.shapes import QWEN25_14B, Shape

    fewer, more = sorted(args.layers)
    shape = Shape(f"Qwen2.5-14B block shapes, vocab {args.vocab}", more, QWEN25_14B.d_model, QWEN25_14B.d_mlp,
                  QWEN25_14B.n_heads, QWEN25_14B.n_kv_heads, QWEN25_14B.d_head, args.vocab)  # fmt: skip
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_loading-") as tmp:
        paths = write_checkpoints(Path(tmp), shape, [fewer, more], args.n_ctx)
        written = time.perf_counter() - start
        results = {(how, n): measure(paths[n], how) for how in PATHS for n in (fewer, more)}
    one_layer = layer_bytes(shape)
    copies = {how: (results[how, more]["peak_bytes"] - results[how, fewer]["peak_bytes"]) / (more - fewer) / one_layer
              for how in PATHS}  # fmt: skip
    print(
        f"{'path':<16} {'layers':>6} {'weights (MiB)':>14} {'peak RSS added (MiB)':>21} {'x weights':>10} {'load (s)':>9}"
    )
    for (how, n), r in results.items():
        print(f"{how:<16} {n:>6} {r['param_bytes'] / MIB:>14.0f} {r['peak_bytes'] / MIB:>21.0f} "
              f"{r['peak_bytes'] / r['param_bytes']:>10.2f} {r['wall_s']:>9.1f}")  # fmt: skip
    print(f"one layer = {one_layer / MIB:.0f} MiB in bf16; copies of the weights held at the peak, per layer: "
          f"whole HF model {copies['whole_hf_model']:.2f}, layer by layer {copies['layer_by_layer']:.2f}")  # fmt: skip
    total = time.perf_counter() - start
    print(json.dumps({
        "old_copies_per_layer": copies["whole_hf_model"], "new_copies_per_layer": copies["layer_by_layer"],
        "layer_bytes": one_layer, "layers": [fewer, more], "vocab": args.vocab, "n_ctx": args.n_ctx,
        "peaks_bytes": {f"{how}_{n}_layers": r["peak_bytes"] for (how, n), r in results.items()},
        "load_wall_s": {f"{how}_{n}_layers": r["wall_s"] for (how, n), r in results.items()},
        "weight_bytes": {f"{n}_layers": results[PATHS[0], n]["param_bytes"] for n in (fewer, more)},
        "write_s": written, "total_wall_s": total,
    }))  # fmt: skip


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == _CHILD_FLAG:
        child(Path(sys.argv[2]), sys.argv[3])
    else:
        main()
