"""The content-addressed cache: a re-run reuses what is valid (same model, data, settings and code)
and recomputes what changed; cached results equal computed ones."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from chat_data import KL, TRAIN

from mech.adapters.steering import SteeringVector
from mech.evaluation import generate
from mech.evaluation.questions import Question
from mech.training import cache as cache_module
from mech.training.cache import ContentCache, model_identity
from mech.training.cached_set import CachedChatSet
from mech.training.config import FinetuneConfig, KLSchedule
from mech.training.engine import finetune


def _site(model):
    return SteeringVector(model.cfg.d_model, layer=1).entry(model)


def test_residuals_are_reused_for_the_same_model_data_and_site(tiny_qwen2, tmp_path):
    cache = ContentCache(tmp_path)
    first = CachedChatSet.build(tiny_qwen2, TRAIN, _site(tiny_qwen2), batch_size=2, name="t", cache=cache)
    assert (cache.stats.hits, cache.stats.misses) == (0, 1)
    again = CachedChatSet.build(tiny_qwen2, TRAIN, _site(tiny_qwen2), batch_size=2, name="t", cache=cache)
    assert (cache.stats.hits, cache.stats.misses) == (1, 1)
    assert all(torch.equal(a, b) for a, b in zip(first.residuals, again.residuals, strict=True))

    CachedChatSet.build(tiny_qwen2, TRAIN[:-1], _site(tiny_qwen2), batch_size=2, name="t", cache=cache)
    CachedChatSet.build(tiny_qwen2, TRAIN, _site(tiny_qwen2), batch_size=3, name="t", cache=cache)
    site0 = SteeringVector(tiny_qwen2.cfg.d_model, layer=0).entry(tiny_qwen2)
    CachedChatSet.build(tiny_qwen2, TRAIN, site0, batch_size=2, name="t", cache=cache)
    assert cache.stats.misses == 4  # other data, other batching, other site: recomputed
    assert len(cache.entries("residuals")) == 4
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_code_change_or_other_weights_recompute(tiny_qwen2, tmp_path, monkeypatch):
    cache = ContentCache(tmp_path)
    CachedChatSet.build(tiny_qwen2, TRAIN, _site(tiny_qwen2), batch_size=2, name="t", cache=cache)
    monkeypatch.setattr(cache_module, "code_version", lambda: "another-version")
    CachedChatSet.build(tiny_qwen2, TRAIN, _site(tiny_qwen2), batch_size=2, name="t", cache=cache)
    assert cache.stats.misses == 2
    identity = model_identity(tiny_qwen2)
    original = tiny_qwen2.W_E[3, 0].item()
    with torch.no_grad():
        tiny_qwen2.W_E[3, 0] = original + 1.0
    try:
        assert model_identity(tiny_qwen2)["weights"] != identity["weights"]
    finally:
        with torch.no_grad():
            tiny_qwen2.W_E[3, 0] = original
    assert model_identity(tiny_qwen2) == identity


def test_the_code_version_covers_every_module_of_mech(tmp_path, monkeypatch):
    import shutil

    import mech

    assert cache_module._PACKAGE_ROOT == Path(mech.__file__).resolve().parent
    copy = tmp_path / "mech"
    shutil.copytree(
        cache_module._PACKAGE_ROOT, copy, ignore=shutil.ignore_patterns("checkpoints", "__pycache__")
    )
    monkeypatch.setattr(cache_module, "_PACKAGE_ROOT", copy)
    before = cache_module.code_version.__wrapped__()
    with (copy / "models" / "chat.py").open("a") as f:  # a stage far from the cache's own module
        f.write("\n# changed\n")
    assert cache_module.code_version.__wrapped__() != before


def test_hooks_on_the_model_bypass_the_cache(tiny_qwen2, tmp_path):
    cache = ContentCache(tmp_path)
    with tiny_qwen2.hooks(fwd_hooks=[("hook_embed", lambda x, hook: 2 * x)]):
        CachedChatSet.build(tiny_qwen2, TRAIN, _site(tiny_qwen2), batch_size=2, name="t", cache=cache)
    assert cache.entries() == [] and cache.stats.misses == 0


def test_finetuning_from_the_cache_is_bit_identical_and_reuses_residuals_and_reference(tiny_qwen2, tmp_path):
    cfg = FinetuneConfig(steps=4, lr=5e-2, kl=KLSchedule(1.0), kl_batch_size=3)

    def train(cache):
        vector = SteeringVector(tiny_qwen2.cfg.d_model, layer=1, init_std=0.1, seed=2)
        return finetune(tiny_qwen2, vector, TRAIN, KL, cfg, cache=cache, progress=False)

    plain = train(None)
    cache = ContentCache(tmp_path)
    filled = train(cache)
    assert (cache.stats.hits, cache.stats.misses) == (0, 3)  # train residuals, KL residuals, reference
    reused = train(cache)
    assert (cache.stats.hits, cache.stats.misses) == (3, 3)
    assert plain.trajectory == filled.trajectory == reused.trajectory
    assert torch.equal(plain.adapter.parameters_flat(), reused.adapter.parameters_flat())

    topk = FinetuneConfig(
        **{**cfg.to_dict(), "kl": KLSchedule(1.0), "reference": "topk", "reference_topk": 5}
    )
    vector = SteeringVector(tiny_qwen2.cfg.d_model, layer=1, init_std=0.1, seed=2)
    fresh = finetune(tiny_qwen2, vector, TRAIN, KL, topk, progress=False)
    vector = SteeringVector(tiny_qwen2.cfg.d_model, layer=1, init_std=0.1, seed=2)
    finetune(tiny_qwen2, vector, TRAIN, KL, topk, cache=cache, progress=False)  # a new reference entry
    vector = SteeringVector(tiny_qwen2.cfg.d_model, layer=1, init_std=0.1, seed=2)
    cached = finetune(tiny_qwen2, vector, TRAIN, KL, topk, cache=cache, progress=False)
    assert cached.trajectory == fresh.trajectory


@pytest.fixture
def questions():
    return [
        Question(id=f"q{i}", domain="d", question=f"what should i do about my dog {i} ?") for i in range(5)
    ]


def test_answers_are_cached_per_model_adapter_questions_and_config(
    tiny_qwen2, tmp_path, questions, monkeypatch
):
    cache = ContentCache(tmp_path)
    cfg = generate.SamplingConfig(max_new_tokens=4, batch_size=2, seed=1)
    first = generate.sample_answers(tiny_qwen2, questions, cfg, cache=cache)
    calls = []
    real = generate.generate_batch
    monkeypatch.setattr(generate, "generate_batch", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    again = generate.sample_answers(tiny_qwen2, questions, cfg, cache=cache)
    assert calls == [] and again.equals(first) and again.attrs == first.attrs

    vector = SteeringVector(tiny_qwen2.cfg.d_model, layer=1, init_std=1.0)
    generate.sample_answers(tiny_qwen2, questions, cfg, adapter=vector, cache=cache)
    generate.sample_answers(tiny_qwen2, questions[:4], cfg, cache=cache)
    generate.sample_answers(
        tiny_qwen2, questions, generate.SamplingConfig(max_new_tokens=4, batch_size=2, seed=2), cache=cache
    )
    assert len(calls) == 3 + 2 + 3  # batches of the three changed requests, none reused
    with vector.applied(tiny_qwen2):  # hooks the key cannot see: computed, never stored
        generate.sample_answers(tiny_qwen2, questions, cfg, cache=cache)
    assert len(cache.entries("answers")) == 4
