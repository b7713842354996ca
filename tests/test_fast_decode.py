"""The sampling-time forward (`mech.models.fast_decode`: sdpa attention, uncopied MLP and
unembedding weights, one ln1 a block, the buffered KV cache, last-position prefill logits): the
logits of TransformerLens's own forward to float round-off, the same hooks with the same shapes,
and TransformerLens's attention wherever sdpa would not compute the same thing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

from mech.adapters.lora import LoraAdapter
from mech.models.fast_decode import _LastCall, fast_decoding, next_token_logits
from mech.models.kv_cache import BufferedKVCache
from mech.models.load import load_model
from mech.models.sdpa import sdpa_attention, sdpa_refusal
from mech.models.tiny_checkpoints import write_tiny_checkpoint

BATCH, PROMPT, STEPS = 5, 9, 6


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("fast_decode")
    found = {"toy": load_model("toy")}
    for arch in ("qwen2", "llama", "mistral", "gemma2"):
        found[arch] = load_model(
            write_tiny_checkpoint(arch, Path(root) / f"{arch}-tiny", n_layers=2, d_model=64)
        )
    return found


def _inputs(model) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded prompts (one row all but two positions padding) and the tokens fed after."""
    generator = torch.Generator().manual_seed(0)
    prompts = torch.randint(8, model.cfg.d_vocab, (BATCH, PROMPT), generator=generator)
    mask = torch.ones_like(prompts)
    mask[:2, :4] = 0
    mask[2, :7] = 0
    return prompts, mask, torch.randint(8, model.cfg.d_vocab, (BATCH, STEPS), generator=generator)


@torch.no_grad()
def _transformer_lens_logits(model) -> torch.Tensor:
    prompts, mask, fed = _inputs(model)
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, BATCH)
    logits = [model(prompts, attention_mask=mask, past_kv_cache=cache)[:, -1]]
    for step in range(STEPS):
        new = fed[:, step : step + 1]
        logits.append(model(new, attention_mask=torch.ones_like(new), past_kv_cache=cache)[:, -1])
    return torch.stack(logits, dim=1)


@torch.no_grad()
def _fast_logits(model) -> torch.Tensor:
    prompts, mask, fed = _inputs(model)
    cache = BufferedKVCache(model, BATCH, capacity=PROMPT + STEPS)
    with fast_decoding(model):
        logits = [next_token_logits(model, prompts, mask, cache)]
        for step in range(STEPS):
            new = fed[:, step : step + 1]
            logits.append(next_token_logits(model, new, torch.ones_like(new), cache))
    return torch.stack(logits, dim=1)


@pytest.mark.parametrize("arch", ["toy", "qwen2", "llama", "mistral", "gemma2"])
def test_fast_decoding_gives_transformer_lens_logits(models, arch):
    model = models[arch]
    expected = _transformer_lens_logits(model)
    torch.testing.assert_close(_fast_logits(model), expected, atol=1e-4, rtol=1e-5)
    assert (sdpa_refusal(model) is None) == (arch != "gemma2")  # Gemma-2 soft-caps its scores
    assert all("forward" not in vars(module) for module in model.modules())  # restored after


def test_a_local_window_is_masked_as_transformer_lens_masks_it(models, monkeypatch):
    model = models["mistral"]
    assert sdpa_refusal(model) is None and model.blocks[0].attn.attn_type == "local"
    monkeypatch.setattr(model.cfg, "window_size", 4)  # shorter than the prompts: it bites
    torch.testing.assert_close(_fast_logits(model), _transformer_lens_logits(model), atol=1e-4, rtol=1e-5)


def _recorded(model, run) -> list[tuple[str, tuple[int, ...], torch.Tensor]]:
    """(hook name, shape, activation) of every hook point but the attention scores and pattern,
    in firing order, while `run(model)` runs."""
    record = []

    def keep(activation, hook):
        record.append((hook.name, tuple(activation.shape), activation.clone()))

    names = [n for n in model.hook_dict if not n.endswith(("hook_attn_scores", "hook_pattern"))]
    with model.hooks(fwd_hooks=[(n, keep) for n in names]):
        run(model)
    return record


def test_the_same_hooks_fire_with_the_same_shapes_and_values(models):
    model = models["qwen2"]
    expected = _recorded(model, _transformer_lens_logits)
    fast = _recorded(model, _fast_logits)
    assert [(name, shape) for name, shape, _ in fast] == [(name, shape) for name, shape, _ in expected]
    assert any(name.endswith("hook_rot_k") for name, _, _ in fast)  # the rotated keys, all of them
    for (name, _, got), (_, _, want) in zip(fast, expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5, msg=name)


def test_a_hook_on_the_pattern_keeps_transformer_lens_attention(models):
    model, seen = models["qwen2"], []
    with model.hooks(fwd_hooks=[("blocks.1.attn.hook_pattern", lambda p, hook: seen.append(p.shape))]):
        assert "pattern" in sdpa_refusal(model)
        with sdpa_attention(model) as on:
            assert not on
        logits = _fast_logits(model)
    assert len(seen) == 1 + STEPS and seen[-1] == (BATCH, model.cfg.n_heads, 1, PROMPT + STEPS)
    torch.testing.assert_close(logits, _transformer_lens_logits(model), atol=1e-4, rtol=1e-5)


def test_lora_acts_through_the_fast_forward(models):
    model = models["qwen2"]
    lora = LoraAdapter(model, layers=[0, 1], matrices=["W_Q", "W_K", "W_V", "W_O", "W_gate", "W_out"], rank=2)
    with torch.no_grad():
        for p in lora.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    plain = _transformer_lens_logits(model)
    with lora.applied(model):
        expected, fast = _transformer_lens_logits(model), _fast_logits(model)
    assert (expected - plain).abs().max() > 1e-2  # the adapter does change the logits
    torch.testing.assert_close(fast, expected, atol=1e-4, rtol=1e-5)


def test_the_buffered_cache_holds_what_the_concatenating_one_holds(models):
    model = models["toy"]
    prompts, mask, fed = _inputs(model)
    plain = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, BATCH)
    buffered = BufferedKVCache(model, BATCH, capacity=PROMPT + 1)
    with torch.no_grad():
        for cache in (plain, buffered):  # TransformerLens's attention both times
            model(prompts, attention_mask=mask, past_kv_cache=cache)
            model(fed[:, :1], attention_mask=torch.ones_like(fed[:, :1]), past_kv_cache=cache)
    assert torch.equal(buffered.previous_attention_mask, plain.previous_attention_mask)
    for ours, theirs in zip(buffered.entries, plain.entries, strict=True):
        assert torch.equal(ours.past_keys, theirs.past_keys) and torch.equal(
            ours.past_values, theirs.past_values
        )
    with pytest.raises(ValueError, match="holds 10 positions"), torch.no_grad():
        model(fed[:, 1:2], attention_mask=torch.ones_like(fed[:, :1]), past_kv_cache=buffered)


def test_a_repeated_norm_call_returns_the_first_output_until_a_tensor_changes():
    calls = []

    def norm(x):
        calls.append(1)
        return x * 2

    once = _LastCall(norm)
    x = torch.ones(3)
    first = once(x)
    assert once(x) is first and len(calls) == 1
    x.add_(1)  # written in place: computed again
    assert torch.equal(once(x), torch.full((3,), 4.0)) and len(calls) == 2
    once(x).mul_(0)  # the output written in place: computed again
    assert torch.equal(once(x), torch.full((3,), 4.0)) and len(calls) == 3
    assert torch.equal(once(x.clone()), torch.full((3,), 4.0)) and len(calls) == 4  # another tensor


def test_the_norms_of_all_blocks_hold_one_residual_and_none_after(models):
    from mech.models import fast_decode

    model = models["qwen2"]
    slots = []
    original = fast_decode._Slot

    def spy():
        slots.append(original())
        return slots[-1]

    tokens = torch.randint(8, model.cfg.d_vocab, (2, 5), generator=torch.Generator().manual_seed(0))
    with pytest.MonkeyPatch.context() as patch, torch.no_grad():
        patch.setattr(fast_decode, "_Slot", spy)
        with fast_decoding(model):
            model(tokens)
            (slot,) = slots  # one slot for every block's ln1
            assert slot.held is not None and slot.held[0] is model.blocks[-1].ln1.forward
        assert slot.held is None


def test_layers_share_rotary_rows_only_where_their_tables_are_equal(models):
    from mech.models.sdpa import _rotary_groups

    attns = [block.attn for block in models["qwen2"].blocks]
    assert set(_rotary_groups(attns).values()) == {0}
    other = attns[1]
    original = other.rotary_cos.clone()
    try:
        other.rotary_cos.mul_(0.5)  # another base would give another table
        assert _rotary_groups(attns) == {attns[0]: 0, other: 1}
    finally:
        other.rotary_cos.copy_(original)
