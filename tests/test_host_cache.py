"""`FinetuneConfig.cache_device`: cached residuals and reference log-probs kept elsewhere than the
model (host memory, pinned for a GPU model) give the same run, one batch moved per forward."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from chat_data import KL, TRAIN

from mech.adapters.lora import LoraAdapter
from mech.training import cached_set
from mech.training.cached_set import CachedChatSet
from mech.training.config import FinetuneConfig, KLSchedule
from mech.training.engine import finetune

CFG = FinetuneConfig(steps=3, lr=1e-2, batch_size=2, kl_batch_size=2, kl=KLSchedule(1.0))


def _run(model, cfg, kl=KL, **kwargs):
    adapter = LoraAdapter(model, layers=[1], matrices=["W_out"], rank=1, seed=0)
    result = finetune(model, adapter, TRAIN, kl, cfg, progress=False, **kwargs)
    return result.trajectory, [p.detach().clone() for p in adapter.parameters()]


@pytest.mark.parametrize("reference", ["exact", "topk", "recompute"])
def test_a_host_cache_gives_the_same_run(tiny_qwen2, reference):
    cfg = replace(CFG, reference=reference)
    on_model = _run(tiny_qwen2, cfg)
    on_host = _run(tiny_qwen2, replace(cfg, cache_device="cpu"))
    assert on_model[0] == on_host[0]
    assert all(torch.equal(a, b) for a, b in zip(on_model[1], on_host[1], strict=True))


def test_every_forward_reads_its_batch_through_the_move(tiny_qwen2, monkeypatch):
    """Residuals and references reach the blocks only via `_on_model` (one batch at a time)."""
    moved = []

    def spy(value, device):
        moved.append(value)
        return value

    monkeypatch.setattr(cached_set, "_on_model", spy)
    _run(tiny_qwen2, replace(CFG, reference="topk", cache_device="cpu"))
    residuals = [v for v in moved if isinstance(v, torch.Tensor) and v.dim() == 3]
    references = [v for v in moved if isinstance(v, torch.return_types.topk)]
    # 3 steps x (CE + KL forward), plus the reference computed once per KL batch (2 batches).
    assert len(residuals) == 3 * 2 + 2
    assert len(references) == 3


def test_a_shared_kl_set_is_moved_to_the_host_once(tiny_qwen2):
    lora = LoraAdapter(tiny_qwen2, layers=[1], matrices=["W_out"], rank=1, seed=0)
    shared = CachedChatSet.build(tiny_qwen2, KL, lora.entry(tiny_qwen2), batch_size=2, name="kl")
    assert shared.store_device is None
    with_shared = _run(tiny_qwen2, replace(CFG, cache_device="cpu"), kl=shared)
    assert shared.store_device == "cpu"
    assert with_shared[0] == _run(tiny_qwen2, CFG)[0]


def test_host_copies_are_pinned_only_for_a_gpu_model(monkeypatch):
    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t: pinned.append(t) or t)
    top = torch.topk(torch.randn(3, 5), 2)
    stored = cached_set._stored(top, "cpu", "cuda")
    assert isinstance(stored, torch.return_types.topk) and len(pinned) == 2
    cached_set._stored(torch.zeros(2), "cpu", "cpu")
    assert len(pinned) == 2
    assert cached_set._stored(None, "cpu", "cuda") is None


def test_a_run_resumes_with_another_cache_device(tiny_qwen2, tmp_path):
    cfg = replace(CFG, steps=4, save_every=1)
    whole = _run(tiny_qwen2, cfg)[0]

    def kill(record):
        if record.step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(tiny_qwen2, cfg, run_dir=tmp_path / "run", on_step=kill)
    resumed = _run(tiny_qwen2, replace(cfg, cache_device="cpu"), run_dir=tmp_path / "run", resume=True)
    assert resumed[0] == whole
