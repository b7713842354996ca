"""The memory formula of `benchmarks/memory.py` against measurement on tiny Qwen2-shaped models:
saved activations, a finetune step's peak, and the meta-device replay that extrapolates it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch


def _load_benchmark():
    # benchmarks/ is not an installed package: load the file itself.
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "memory.py"
    spec = importlib.util.spec_from_file_location("benchmarks_memory", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


memory = _load_benchmark()
TINY = memory.Shape(
    "tiny-qwen2", n_layers=4, d_model=64, d_mlp=160, n_heads=4, n_kv_heads=2, d_head=16, d_vocab=96
)
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


@pytest.fixture(scope="module", params=sorted(DTYPES))
def tiny(request):
    return memory.qwen2_model(TINY, dtype=DTYPES[request.param], device="cpu")


def test_parameter_formula(tiny):
    assert sum(p.numel() for p in tiny.parameters()) == TINY.params()


@pytest.mark.parametrize("kind", memory.KINDS)
def test_saved_activations_match_formula(tiny, kind):
    s = memory.dtype_bytes(tiny)
    fit = memory.fit_block_costs(tiny, kind, seq=8)
    for b, p in ((1, 8), (2, 8), (1, 16)):
        formula = fit["blocks"] * memory.block_bytes(TINY, s, b * p, p)
        formula += memory.adapter_saved_bytes(TINY, kind, s, b * p, p)
        assert fit["saved"][f"{b}x{p}"] == pytest.approx(formula, rel=0.1)


@pytest.mark.parametrize("kind", memory.KINDS)
def test_step_peak_matches_estimate_and_meta_replay(tiny, kind):
    s, batch = memory.dtype_bytes(tiny), memory.Batch(2, 8, 4)
    batches, residuals = memory.chat_sets(tiny, batch, batch)
    measured = memory.engine_step_peak(tiny, kind, batches, residuals)
    assert measured["peak"] == pytest.approx(
        memory.estimate_step(TINY, kind, s, batch, batch)["total"], rel=0.15
    )
    assert measured["adapter_state"] == pytest.approx(memory.adapter_state_bytes(TINY, kind), rel=0.01)
    meta = memory.qwen2_model(TINY, dtype=tiny.cfg.dtype, device="meta")
    assert memory.replay_step(meta, kind, batch, batch) == pytest.approx(measured["peak"], rel=0.05)
