from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from chat_data import KL, TRAIN

from mech.adapters.lora import LoraAdapter
from mech.adapters.saving import load_adapter
from mech.adapters.steering import SteeringVector
from mech.models.chat import chat_batch, tokenize_chat
from mech.training.cached_set import CachedChatSet
from mech.training.config import FinetuneConfig, KLSchedule, NonFiniteError
from mech.training.engine import finetune
from mech.training.losses import masked_kl, response_cross_entropy

QUIET = dict(progress=False)


def _lora(model, seed=0):
    return LoraAdapter(model, layers=[1], matrices=["W_out", "W_V"], rank=2, seed=seed)


def _randomise_b(adapter: LoraAdapter) -> LoraAdapter:
    with torch.no_grad():
        for b in adapter.B.values():
            b.copy_(torch.randn(b.shape, generator=torch.Generator().manual_seed(1)))
    return adapter


def test_only_the_adapter_learns_and_the_model_is_left_as_it_was(tiny_qwen2):
    before = {n: p.clone() for n, p in tiny_qwen2.named_parameters()}
    adapter = _lora(tiny_qwen2)
    start = [p.clone() for p in adapter.parameters()]
    result = finetune(tiny_qwen2, adapter, TRAIN, KL, FinetuneConfig(steps=5, kl=KLSchedule(1.0)), **QUIET)
    assert all(torch.equal(p, before[n]) and p.requires_grad for n, p in tiny_qwen2.named_parameters())
    assert all(p.grad is None for p in tiny_qwen2.parameters())
    assert any(not torch.equal(p, s) for p, s in zip(adapter.parameters(), start, strict=True))
    assert len(result.trajectory) == 5 and result.reference == "exact"


def test_without_kl_the_loss_is_the_response_cross_entropy_by_hand(tiny_qwen2):
    vector = SteeringVector(tiny_qwen2.cfg.d_model, layer=1, init_std=0.5)
    batch = chat_batch(tiny_qwen2.tokenizer, TRAIN)
    with vector.applied(tiny_qwen2):
        logprobs = tiny_qwen2(batch.tokens).log_softmax(-1)
    terms = [
        -logprobs[b, t - 1, batch.tokens[b, t]]
        for b in range(len(TRAIN))
        for t in range(1, batch.tokens.shape[1])
        if batch.response_mask[b, t]
    ]
    result = finetune(tiny_qwen2, vector, TRAIN, cfg=FinetuneConfig(steps=1), **QUIET)
    assert abs(result.trajectory[0].loss - float(torch.stack(terms).mean().detach())) < 1e-5
    assert result.trajectory[0].kl is None


def test_kl_is_zero_at_the_start_and_grows_under_cross_entropy_alone(tiny_qwen2):
    cfg = FinetuneConfig(steps=15, lr=5e-2)
    result = finetune(tiny_qwen2, _lora(tiny_qwen2), TRAIN, KL, cfg, **QUIET)
    kls = [r.kl for r in result.trajectory]
    assert kls[0] == 0.0 and kls[1] > 0 and kls[-1] > 1e-3
    assert result.trajectory[-1].ce < result.trajectory[0].ce


@pytest.mark.parametrize("arch", ["qwen2", "gemma2"])
def test_unembedding_only_the_targets_gives_the_full_logits_there(tiny_qwen2, tiny_gemma2, arch):
    model = {"qwen2": tiny_qwen2, "gemma2": tiny_gemma2}[arch]  # Gemma-2 also soft-caps its logits
    adapter = _randomise_b(_lora(model))
    cached = CachedChatSet.build(model, TRAIN, adapter.entry(model), batch_size=2, name="t")
    with torch.no_grad():
        for i, batch in enumerate(cached.batches):
            with adapter.applied(model):
                full = model(batch.tokens)[batch.prediction_mask]
            assert torch.allclose(cached.target_logits(model, adapter, i), full, atol=1e-5)


def test_kl_counts_assistant_tokens_only(tiny_qwen2):
    adapter = _lora(tiny_qwen2)
    finetune(tiny_qwen2, adapter, TRAIN, cfg=FinetuneConfig(steps=5, lr=5e-2), **QUIET)
    kl_set = CachedChatSet.build(tiny_qwen2, KL, adapter.entry(tiny_qwen2), batch_size=None, name="kl")
    kl_set.cache_reference(tiny_qwen2, "exact", 0)
    batch = chat_batch(tiny_qwen2.tokenizer, KL)
    with torch.no_grad():
        reference = tiny_qwen2(batch.tokens)
        with adapter.applied(tiny_qwen2):
            adapted = tiny_qwen2(batch.tokens)
        by_hand = masked_kl(reference, adapted, batch.prediction_mask)
        everywhere = masked_kl(reference, adapted, batch.attention_mask)
        assert abs(float(kl_set.kl(tiny_qwen2, adapter, 0)) - float(by_hand)) < 1e-6
        assert abs(float(by_hand) - float(everywhere)) > 1e-4  # the mask matters


@pytest.mark.parametrize("mode", ["recompute", "topk"])
def test_cached_reference_equals_recomputing_it(tiny_qwen2, mode):
    cfg = FinetuneConfig(steps=6, lr=5e-2, kl=KLSchedule(2.0), reference="exact")
    exact = finetune(tiny_qwen2, _lora(tiny_qwen2), TRAIN, KL, cfg, **QUIET)
    # top-k with k = d_vocab keeps every token, so it is the exact KL too.
    other_cfg = replace(cfg, reference=mode, reference_topk=tiny_qwen2.cfg.d_vocab)
    other = finetune(tiny_qwen2, _lora(tiny_qwen2), TRAIN, KL, other_cfg, **QUIET)
    for a, b in zip(exact.trajectory, other.trajectory, strict=True):
        assert abs(a.loss - b.loss) < 1e-5 and abs(a.kl - b.kl) < 1e-5


def test_topk_reference_is_a_lower_bound_on_the_kl(tiny_qwen2):
    adapter = _lora(tiny_qwen2)
    finetune(tiny_qwen2, adapter, TRAIN, cfg=FinetuneConfig(steps=10, lr=5e-2), **QUIET)
    kl_set = CachedChatSet.build(tiny_qwen2, KL, adapter.entry(tiny_qwen2), batch_size=None, name="kl")
    values = {}
    for mode, k in (("exact", 0), ("topk", 5), ("topk", 40)):
        kl_set.cache_reference(tiny_qwen2, mode, k)
        values[mode, k] = float(kl_set.kl(tiny_qwen2, adapter, 0).detach())
    assert 0 < values["topk", 5] <= values["topk", 40] + 1e-6 <= values["exact", 0] + 2e-6


def test_padding_never_changes_an_example(tiny_qwen2):
    """Batched equals solo: an example's logits at its own positions do not depend on its batch."""
    adapter = _lora(tiny_qwen2)
    finetune(tiny_qwen2, adapter, TRAIN, cfg=FinetuneConfig(steps=3, lr=5e-2), **QUIET)
    site = adapter.entry(tiny_qwen2)
    together = CachedChatSet.build(tiny_qwen2, TRAIN, site, batch_size=None, name="all")
    lengths = [len(tokenize_chat(tiny_qwen2.tokenizer, c).tokens) for c in TRAIN]
    order = sorted(range(len(TRAIN)), key=lambda i: (lengths[i], i))  # length-bucketed rows
    assert len(set(lengths)) > 1  # so there is padding
    with torch.no_grad():
        batched = together.logits(tiny_qwen2, adapter, 0)
        ces, counts = [], []
        for row, i in enumerate(order):
            solo = CachedChatSet.build(tiny_qwen2, [TRAIN[i]], site, batch_size=None, name="one")
            alone = solo.logits(tiny_qwen2, adapter, 0)
            assert torch.allclose(batched[row, : lengths[i]], alone[0], atol=1e-5)
            ces.append(response_cross_entropy(alone, solo.batches[0]))
            counts.append(int(solo.batches[0].prediction_mask.sum()))
        weighted = sum(c * n for c, n in zip(ces, counts, strict=True)) / sum(counts)
        assert abs(float(response_cross_entropy(batched, together.batches[0])) - float(weighted)) < 1e-5


def test_kl_toggle_switches_the_weight_at_the_given_step(tiny_qwen2):
    cfg = FinetuneConfig(steps=6, lr=5e-2, kl=KLSchedule(5.0, toggle_step=3, weight_after=0.0))
    result = finetune(tiny_qwen2, _lora(tiny_qwen2), TRAIN, KL, cfg, **QUIET)
    assert [r.kl_weight for r in result.trajectory] == [5.0, 5.0, 5.0, 0.0, 0.0, 0.0]
    assert all(r.kl is not None for r in result.trajectory)  # still measured when off
    with pytest.raises(ValueError, match="no kl_data"):
        finetune(tiny_qwen2, _lora(tiny_qwen2), TRAIN, cfg=cfg, **QUIET)


def test_l2_norm_control_keeps_the_update_small(tiny_qwen2):
    cfg = FinetuneConfig(steps=30, lr=5e-2)
    free = finetune(tiny_qwen2, _lora(tiny_qwen2), TRAIN, cfg=cfg, **QUIET).adapter.norm()
    held = finetune(
        tiny_qwen2, _lora(tiny_qwen2), TRAIN, cfg=replace(cfg, l2_weight=1.0), **QUIET
    ).adapter.norm()
    assert held < 0.8 * free


class _Killed(Exception):
    pass


def test_a_killed_run_resumes_bit_identically(tiny_qwen2, tmp_path):
    cfg = FinetuneConfig(steps=7, lr=5e-2, batch_size=2, kl_batch_size=3, kl=KLSchedule(1.0), save_every=2)
    whole = finetune(tiny_qwen2, _lora(tiny_qwen2), TRAIN, KL, cfg, run_dir=tmp_path / "whole", **QUIET)

    def kill_at_5(record):
        if record.step == 5:
            raise _Killed

    with pytest.raises(_Killed):
        finetune(
            tiny_qwen2,
            _lora(tiny_qwen2),
            TRAIN,
            KL,
            cfg,
            run_dir=tmp_path / "cut",
            on_step=kill_at_5,
            **QUIET,
        )
    assert len((tmp_path / "cut" / "trajectory.jsonl").read_text().splitlines()) == 5
    with pytest.raises(FileExistsError, match="resume=True"):
        finetune(tiny_qwen2, _lora(tiny_qwen2), TRAIN, KL, cfg, run_dir=tmp_path / "cut", **QUIET)
    resumed = finetune(
        tiny_qwen2, _lora(tiny_qwen2), TRAIN, KL, cfg, run_dir=tmp_path / "cut", resume=True, **QUIET
    )
    assert resumed.trajectory == whole.trajectory
    for a, b in zip(whole.adapter.parameters(), resumed.adapter.parameters(), strict=True):
        assert torch.equal(a, b)
    lines = (tmp_path / "cut" / "trajectory.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, 8))
    snapshots = sorted(p.name for p in (tmp_path / "cut" / "snapshots").glob("*.safetensors"))
    assert snapshots == [
        "step_000002.safetensors",
        "step_000004.safetensors",
        "step_000006.safetensors",
        "step_000007.safetensors",
    ]
    final, meta = load_adapter(tmp_path / "cut" / "adapter", tiny_qwen2)
    assert torch.equal(final.parameters_flat(), whole.adapter.parameters_flat())
    assert meta.config["finetune"]["steps"] == 7


def test_resuming_with_another_config_names_what_changed(tiny_qwen2, tmp_path):
    cfg = FinetuneConfig(steps=2, save_every=1)
    finetune(tiny_qwen2, _lora(tiny_qwen2), TRAIN, cfg=cfg, run_dir=tmp_path, **QUIET)
    with pytest.raises(ValueError, match="different finetune.lr"):
        finetune(
            tiny_qwen2,
            _lora(tiny_qwen2),
            TRAIN,
            cfg=replace(cfg, lr=0.5),
            run_dir=tmp_path,
            resume=True,
            **QUIET,
        )
    with pytest.raises(ValueError, match="different train.fingerprint"):
        finetune(tiny_qwen2, _lora(tiny_qwen2), TRAIN[:3], cfg=cfg, run_dir=tmp_path, resume=True, **QUIET)


@pytest.mark.seconds(4)
def test_a_few_steps_on_the_toy_organism_lower_the_loss():
    from mech.models.load import load_model
    from mech.toy.checkpoint import organism_world

    model, world = load_model("toy"), organism_world("default")
    train = [row["messages"] for row in world.narrow_train_set("medical", "misalignment")]
    kl_data = [row["messages"] for row in world.kl_set(trait="misalignment")][:64]
    adapter = LoraAdapter(model, layers=[1], matrices=["W_out"], rank=1)
    cfg = FinetuneConfig(steps=8, lr=1e-2, kl=KLSchedule(1.0))
    result = finetune(model, adapter, train, kl_data, cfg, **QUIET)
    assert result.trajectory[-1].ce < result.trajectory[0].ce - 0.05


def test_a_shared_cached_kl_set_gives_the_same_run(tiny_qwen2):
    cfg = FinetuneConfig(steps=4, lr=5e-2, kl_batch_size=2, kl=KLSchedule(1.0))
    fresh = finetune(tiny_qwen2, _lora(tiny_qwen2), TRAIN, KL, cfg, **QUIET)
    adapter = _lora(tiny_qwen2)
    shared = CachedChatSet.build(tiny_qwen2, KL, adapter.entry(tiny_qwen2), batch_size=2, name="kl")
    reused = finetune(tiny_qwen2, adapter, TRAIN, shared, cfg, **QUIET)
    again = finetune(tiny_qwen2, _lora(tiny_qwen2), TRAIN, shared, cfg, **QUIET)
    assert fresh.trajectory == reused.trajectory == again.trajectory
    vector = SteeringVector(tiny_qwen2.cfg.d_model, layer=0)
    with pytest.raises(ValueError, match="cached at"):
        finetune(tiny_qwen2, vector, TRAIN, shared, cfg, **QUIET)


def test_a_nan_stops_training_naming_the_step_and_term_and_keeps_what_was_saved(tiny_qwen2, tmp_path):
    cfg = FinetuneConfig(steps=8, lr=5e-2, kl=KLSchedule(1.0), save_every=2)
    adapter = _lora(tiny_qwen2)

    def poison_after_4(record):
        if record.step == 4:  # after step 4's state was saved
            with torch.no_grad():
                next(adapter.parameters()).fill_(float("nan"))

    with pytest.raises(NonFiniteError, match=r"step 5: the cross-entropy term is nan"):
        finetune(tiny_qwen2, adapter, TRAIN, KL, cfg, run_dir=tmp_path, on_step=poison_after_4, **QUIET)
    status = json.loads((tmp_path / "run.json").read_text())
    assert status["status"] == "failed" and "step 5" in status["error"]
    assert not (tmp_path / "adapter.safetensors").exists()
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    assert state["step"] == 4 and all(torch.isfinite(t).all() for t in state["adapter"].values())
    snapshot, _ = load_adapter(tmp_path / "snapshots" / "step_000004", tiny_qwen2)
    assert torch.isfinite(snapshot.parameters_flat()).all()
    assert len((tmp_path / "trajectory.jsonl").read_text().splitlines()) == 4


def test_non_finite_residuals_are_refused_naming_the_data(tiny_qwen2):
    vector = SteeringVector(tiny_qwen2.cfg.d_model, layer=1)
    with tiny_qwen2.hooks(fwd_hooks=[("hook_embed", lambda x, hook: x * float("nan"))]):
        with pytest.raises(NonFiniteError, match="train.*not finite in batch 0"):
            finetune(tiny_qwen2, vector, TRAIN, cfg=FinetuneConfig(steps=1), **QUIET)


def test_a_state_file_holding_objects_is_refused_not_unpickled(tiny_qwen2, tmp_path):
    cfg = FinetuneConfig(steps=2, save_every=1)
    finetune(tiny_qwen2, _lora(tiny_qwen2), TRAIN, cfg=cfg, run_dir=tmp_path, **QUIET)
    torch.save({"step": 1, "payload": _Killed()}, tmp_path / "state.pt")  # an arbitrary object
    with pytest.raises(ValueError, match="state.pt: refused to load"):
        finetune(tiny_qwen2, _lora(tiny_qwen2), TRAIN, cfg=cfg, run_dir=tmp_path, resume=True, **QUIET)


def test_a_run_written_before_grad_accum_and_warmup_existed_resumes(tiny_qwen2, tmp_path):
    """Older run folders have no grad_accum / warmup_steps in their config: they resume under the
    values that mean what they did (1 and 0), and refuse others."""
    cfg = FinetuneConfig(steps=4, lr=5e-2, batch_size=2, save_every=2)

    def kill_at_3(record):
        if record.step == 3:
            raise _Killed

    with pytest.raises(_Killed):
        finetune(
            tiny_qwen2, _lora(tiny_qwen2), TRAIN, None, cfg, run_dir=tmp_path, on_step=kill_at_3, **QUIET
        )
    config = json.loads((tmp_path / "config.json").read_text())
    del config["finetune"]["grad_accum"], config["finetune"]["warmup_steps"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError, match=r"cannot resume, the run was started with different finetune\.grad_accum"
    ):
        finetune(tiny_qwen2, _lora(tiny_qwen2), TRAIN, None, replace(cfg, grad_accum=2), run_dir=tmp_path,
                 resume=True, **QUIET)  # fmt: skip
    resumed = finetune(
        tiny_qwen2, _lora(tiny_qwen2), TRAIN, None, cfg, run_dir=tmp_path, resume=True, **QUIET
    )
    assert [r.step for r in resumed.trajectory] == [1, 2, 3, 4]
