"""A tiny random-weight Qwen2 shape for the memory formula and copy-free matmul tests
(`benchmarks.memory.shapes.qwen2_model` builds it; fixture `tiny_qwen2_shaped` in conftest)."""

from __future__ import annotations

import torch

from benchmarks.memory import shapes

TINY = shapes.Shape(
    "tiny-qwen2", n_layers=4, d_model=64, d_mlp=160, n_heads=4, n_kv_heads=2, d_head=16, d_vocab=96
)
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
