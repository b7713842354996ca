"""The content-addressed cache: a re-run reuses what is valid (same model, data, settings and code)
and recomputes what changed; cached results equal computed ones."""

from __future__ import annotations

from dataclasses import replace
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


def test_a_lora_on_a_middle_block_is_a_hook_the_cache_sees(tiny_qwen2, tmp_path):
    """LoRA acts through plain torch hooks, not TransformerLens hook points: with one applied by
    the caller, residuals and answers are neither read from nor written under the chat model's key."""
    from mech.adapters.lora import LoraAdapter
    from mech.hooks import has_hooks

    cache = ContentCache(tmp_path)
    lora = LoraAdapter(tiny_qwen2, layers=[1], matrices=["W_out"], rank=2, seed=0)
    with torch.no_grad():
        for b in lora.B.values():
            b.normal_(generator=torch.Generator().manual_seed(1))
    site = SteeringVector(tiny_qwen2.cfg.d_model, layer=2, point="pre").entry(tiny_qwen2)
    chat = CachedChatSet.build(tiny_qwen2, TRAIN, site, batch_size=2, name="t", cache=cache)
    assert not has_hooks(tiny_qwen2)
    questions = [Question("q", "general", "how do i save money ?")]
    config = generate.SamplingConfig(n_samples=2, max_new_tokens=4, seed=0)
    generate.sample_answers(tiny_qwen2, questions, config, cache=cache)
    entries = {kind: len(cache.entries(kind)) for kind in ("residuals", "answers")}
    with lora.applied(tiny_qwen2):
        assert has_hooks(tiny_qwen2)
        adapted = CachedChatSet.build(tiny_qwen2, TRAIN, site, batch_size=2, name="t", cache=cache)
        generate.sample_answers(tiny_qwen2, questions, config, cache=cache)
    assert not has_hooks(tiny_qwen2)
    assert {kind: len(cache.entries(kind)) for kind in ("residuals", "answers")} == entries
    assert cache.stats.hits == 0  # the chat model's entries were not served to the adapted model
    assert not torch.equal(chat.residuals[0], adapted.residuals[0])


def test_a_merged_mid_layer_adapter_changes_the_model_key(checkpoints, tmp_path):
    """A PEFT LoRA on one middle block's down_proj, merged at load: the weights fingerprint sees it
    (it used to read only the embedding, the last block's W_out and the unembedding)."""
    from mech.models.load import load_model
    from mech.models.tiny_checkpoints import write_tiny_lora_adapter

    adapter = write_tiny_lora_adapter(
        checkpoints["qwen2"], tmp_path / "mid", target_modules=("down_proj",), layers=(1,)
    )
    base, merged = load_model(checkpoints["qwen2"]), load_model(checkpoints["qwen2"], adapter=adapter)
    assert torch.equal(base.W_E, merged.W_E) and torch.equal(
        base.blocks[2].mlp.W_out, merged.blocks[2].mlp.W_out
    )
    assert not torch.equal(base.blocks[1].mlp.W_out, merged.blocks[1].mlp.W_out)
    assert model_identity(base)["weights"] != model_identity(merged)["weights"]
    assert model_identity(base) == model_identity(load_model(checkpoints["qwen2"]))  # deterministic


def test_an_automatic_top_k_reference_is_said_in_the_log_and_the_config(tiny_qwen2, tmp_path, caplog):
    cfg = FinetuneConfig(steps=1, batch_size=2, kl_batch_size=2, kl=KLSchedule(1.0), reference_budget_mb=1e-6)
    adapter = SteeringVector(tiny_qwen2.cfg.d_model, layer=1)
    with caplog.at_level("WARNING", logger="mech.training.engine"):
        result = finetune(tiny_qwen2, adapter, TRAIN, KL, cfg, run_dir=tmp_path / "run", progress=False)
    assert result.reference == "topk"
    assert "the KL term is a lower bound" in caplog.text
    import json

    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["kl_data"]["reference"]
    assert recorded["mode"] == "topk" and recorded["chosen"] == "auto" and "lower bound" in recorded["note"]
    assert json.loads((tmp_path / "run" / "result.json").read_text())["reference_record"] == recorded
    exact = finetune(tiny_qwen2, adapter, TRAIN, KL, replace(cfg, reference_budget_mb=2048.0), progress=False)
    assert exact.reference == "exact" and exact.reference_record["chosen"] == "auto"
    assert "note" not in exact.reference_record  # without a run folder too: the result says why


def test_an_experiments_saved_adapter_says_how_its_kl_reference_was_kept(tmp_path):
    from experiments.conditions import train_condition
    from experiments.run_dir import RunDir
    from experiments.toy_setting import toy_setup
    from mech.adapters.saving import load_adapter

    setup = toy_setup("default", narrow_domain="medical", train_size=8, kl_size=16)
    run = RunDir.create(tmp_path, "t", {})
    train_condition(
        setup,
        run,
        kind="steering",
        seed=0,
        name="steering",
        steps=1,
        kl_weight=1.0,
        questions=setup.questions[:1],
    )
    _, meta = load_adapter(run.path / "adapters" / "steering_kl1_seed0", setup.model)
    assert meta.config["kl_reference"]["mode"] == "exact" and meta.config["kl_reference"]["chosen"] == "auto"
