"""The memory formula of `benchmarks/memory/` against measurement on tiny Qwen2-shaped models:
saved activations, a finetune step's peak, and the meta-device replay that extrapolates it."""

from __future__ import annotations

import pytest
import torch

from benchmarks.memory import formula, measure, shapes

TINY = shapes.Shape(
    "tiny-qwen2", n_layers=4, d_model=64, d_mlp=160, n_heads=4, n_kv_heads=2, d_head=16, d_vocab=96
)
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


@pytest.fixture(scope="module", params=sorted(DTYPES))
def tiny(request):
    return shapes.qwen2_model(TINY, dtype=DTYPES[request.param], device="cpu")


def test_parameter_formula(tiny):
    assert sum(p.numel() for p in tiny.parameters()) == TINY.params()


@pytest.mark.parametrize("kind", shapes.KINDS)
def test_saved_activations_match_formula(tiny, kind):
    s = shapes.dtype_bytes(tiny)
    fit = measure.fit_block_costs(tiny, kind, seq=8)
    for b, p in ((1, 8), (2, 8), (1, 16)):
        expected = fit["blocks"] * formula.block_bytes(TINY, s, b * p, p)
        expected += formula.adapter_saved_bytes(TINY, kind, s, b * p, p)
        assert fit["saved"][f"{b}x{p}"] == pytest.approx(expected, rel=0.1)


@pytest.mark.parametrize("kind", shapes.KINDS)
def test_step_peak_matches_estimate_and_meta_replay(tiny, kind):
    s, batch = shapes.dtype_bytes(tiny), formula.Batch(2, 8, 4)
    batches, residuals = measure.chat_sets(tiny, batch, batch)
    measured = measure.engine_step_peak(tiny, kind, batches, residuals)
    assert measured["peak"] == pytest.approx(
        formula.estimate_step(TINY, kind, s, batch, batch)["total"], rel=0.15
    )
    assert measured["adapter_state"] == pytest.approx(formula.adapter_state_bytes(TINY, kind), rel=0.01)
    meta = shapes.qwen2_model(TINY, dtype=tiny.cfg.dtype, device="meta")
    assert measure.replay_step(meta, kind, batch, batch) == pytest.approx(measured["peak"], rel=0.05)
