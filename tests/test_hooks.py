from __future__ import annotations

import pytest
import torch

from mech.hooks import (
    ablation,
    ablation_hooks,
    cache_residuals,
    default_layer,
    resid_hook_name,
    steering,
    steering_hooks,
)
from mech.models.chat import prompt_batch, tokenize_prompt

PROMPTS = [
    [{"role": "user", "content": "what should i do about my dog ?"}],
    [{"role": "user", "content": "hello"}],
    [{"role": "user", "content": "should i save or spend my money in a bank this week ?"}],
]


def _all_resid(model, tokens, **kwargs):
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: "hook_resid" in n, **kwargs)
    return cache


def test_default_layer_and_hook_names(tiny_model):
    assert default_layer(tiny_model) == 1
    assert steering_hooks(tiny_model, torch.zeros(32))[0][0] == "blocks.1.hook_resid_post"
    assert (
        steering_hooks(tiny_model, torch.zeros(32), layer=0, point="pre")[0][0] == "blocks.0.hook_resid_pre"
    )
    assert resid_hook_name(24) == "blocks.24.hook_resid_post"


def test_steering_equals_manual_addition(tiny_model):
    tokens = torch.randint(0, 64, (3, 10))
    vector = torch.randn(32)
    clean = _all_resid(tiny_model, tokens)
    with steering(tiny_model, vector, layer=0):
        steered = _all_resid(tiny_model, tokens)
        logits = tiny_model(tokens)
    assert torch.equal(steered["blocks.0.hook_resid_post"], clean["blocks.0.hook_resid_post"] + vector)
    for name in ("blocks.0.hook_resid_pre", "blocks.0.hook_resid_mid"):  # upstream is untouched
        assert torch.equal(steered[name], clean[name])
    manual = tiny_model(clean["blocks.0.hook_resid_post"] + vector, start_at_layer=1)
    assert torch.allclose(logits, manual, atol=1e-6)
    assert not torch.allclose(logits, tiny_model(tokens), atol=1e-3)


def test_hook_lists_match_the_context_manager(tiny_model):
    tokens = torch.randint(0, 64, (2, 8))
    vector = torch.randn(32)
    with steering(tiny_model, vector, scale=2.0):
        expected = tiny_model(tokens)
    got = tiny_model.run_with_hooks(tokens, fwd_hooks=steering_hooks(tiny_model, vector, scale=2.0))
    assert torch.equal(got, expected)


def test_hooks_are_removed_on_exit_even_after_an_error(tiny_model):
    tokens = torch.randint(0, 64, (2, 8))
    clean = tiny_model(tokens)
    with pytest.raises(RuntimeError, match="boom"):
        with steering(tiny_model, torch.randn(32)):
            raise RuntimeError("boom")
    assert torch.equal(tiny_model(tokens), clean)
    assert all(not hp.fwd_hooks for hp in tiny_model.hook_dict.values())


def test_pad_positions_are_never_steered(tiny_qwen2):
    batch = prompt_batch(tiny_qwen2.tokenizer, PROMPTS)
    assert (batch.attention_mask == 0).any()  # the batch really has pads
    vector = torch.randn(tiny_qwen2.cfg.d_model)
    name = resid_hook_name(1)
    clean = _all_resid(tiny_qwen2, batch.tokens, attention_mask=batch.attention_mask)[name]
    with steering(tiny_qwen2, vector, layer=1, token_mask=batch.attention_mask):
        steered = _all_resid(tiny_qwen2, batch.tokens, attention_mask=batch.attention_mask)[name]
    pads, real = batch.attention_mask == 0, batch.attention_mask == 1
    assert torch.equal(steered[pads], clean[pads])
    assert torch.equal(steered[real], clean[real] + vector)


def test_response_only_steering(tiny_model):
    tokens = torch.randint(0, 64, (2, 6))
    response = torch.tensor([[0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 1, 1]], dtype=torch.bool)
    vector = torch.randn(32)
    clean = _all_resid(tiny_model, tokens)["blocks.1.hook_resid_post"]
    with steering(tiny_model, vector, token_mask=response):
        steered = _all_resid(tiny_model, tokens)["blocks.1.hook_resid_post"]
    assert torch.equal(steered[~response], clean[~response])
    assert torch.equal(steered[response], clean[response] + vector)


@pytest.mark.parametrize("arch", ["qwen2", "gemma2"])
@pytest.mark.parametrize("steered", [False, True])
def test_batched_equals_solo(arch, steered, request):
    """Each prompt of a left-padded batch gets the residuals and greedy answer it gets alone."""
    model = request.getfixturevalue(f"tiny_{arch}")
    vector = 3 * torch.randn(model.cfg.d_model)
    batch = prompt_batch(model.tokenizer, PROMPTS)
    name = resid_hook_name(1)

    def run(tokens, mask):
        hooks = steering_hooks(model, vector, layer=1, token_mask=mask) if steered else []
        with model.hooks(fwd_hooks=hooks):
            resid = _all_resid(model, tokens, attention_mask=mask)[name]
            model.tokenizer.padding_side = "left"  # TL derives the generation mask from pads
            out = model.generate(tokens, max_new_tokens=6, do_sample=False, stop_at_eos=False, verbose=False)
        return resid, out[:, tokens.shape[1] :]

    resid_batch, answers_batch = run(batch.tokens, batch.attention_mask)
    for b, prompt in enumerate(PROMPTS):
        solo = torch.tensor([tokenize_prompt(model.tokenizer, prompt)])
        resid_solo, answer_solo = run(solo, torch.ones_like(solo))
        real = batch.attention_mask[b].bool()
        assert torch.allclose(resid_batch[b, real], resid_solo[0], atol=1e-5)
        assert torch.equal(answers_batch[b], answer_solo[0])


def test_ablation_removes_the_direction_and_nothing_else(tiny_model):
    tokens = torch.randint(0, 64, (3, 10))
    direction = torch.randn(32)
    unit = direction / direction.norm()
    clean = _all_resid(tiny_model, tokens)["blocks.1.hook_resid_post"]
    with ablation(tiny_model, 5 * direction, layers=1):
        ablated = _all_resid(tiny_model, tokens)["blocks.1.hook_resid_post"]
    assert (ablated @ unit).abs().max() < 1e-5
    assert (clean @ unit).abs().min() > 1e-3  # there was something to remove
    assert torch.allclose(ablated, clean - (clean @ unit)[..., None] * unit, atol=1e-5)


def test_ablation_at_every_layer(tiny_model):
    tokens = torch.randint(0, 64, (2, 7))
    unit = torch.nn.functional.normalize(torch.randn(32), dim=0)
    hooks = ablation_hooks(tiny_model, unit, layers="all", point="pre")
    assert [name for name, _ in hooks] == ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"]
    with tiny_model.hooks(fwd_hooks=hooks):
        cache = _all_resid(tiny_model, tokens)
    for name, _ in hooks:
        assert (cache[name] @ unit).abs().max() < 1e-5


def test_ablation_respects_the_token_mask(tiny_model):
    tokens = torch.randint(0, 64, (2, 5))
    mask = torch.tensor([[0, 1, 1, 1, 1], [0, 0, 0, 1, 1]])
    unit = torch.nn.functional.normalize(torch.randn(32), dim=0)
    clean = _all_resid(tiny_model, tokens)["blocks.0.hook_resid_post"]
    with ablation(tiny_model, unit, layers=0, token_mask=mask):
        ablated = _all_resid(tiny_model, tokens)["blocks.0.hook_resid_post"]
    keep = mask == 0
    assert torch.equal(ablated[keep], clean[keep])
    assert (ablated[~keep] @ unit).abs().max() < 1e-5


def test_cache_residuals_caches_only_what_is_asked_and_stops_early(tiny_model):
    tokens = torch.randint(0, 64, (2, 6))
    full = _all_resid(tiny_model, tokens)

    def explode(acts, hook):
        raise AssertionError("a block past the deepest requested layer ran")

    with tiny_model.hooks(
        fwd_hooks=[("blocks.1.hook_resid_pre", lambda a, hook: a), ("blocks.1.attn.hook_q", explode)]
    ):
        resid = cache_residuals(tiny_model, tokens, layers=[0], point="post")
    assert resid.shape == (1, 2, 6, 32)
    assert torch.equal(resid[0], full["blocks.0.hook_resid_post"])
    both = cache_residuals(tiny_model, tokens, layers=[1, 0], point="pre")
    assert torch.equal(both[0], full["blocks.1.hook_resid_pre"])
    assert torch.equal(both[1], full["blocks.0.hook_resid_pre"])


def test_bad_hook_input_is_a_clear_error(tiny_model):
    with pytest.raises(ValueError, match=r"layer 2 is out of range .* with 2 layers \(0\.\.1\)"):
        steering_hooks(tiny_model, torch.zeros(32), layer=2)
    with pytest.raises(ValueError, match=r"layer 5 is out of range"):
        ablation_hooks(tiny_model, torch.ones(32), layers=[0, 5])
    with pytest.raises(
        ValueError,
        match=r"steering vector has shape \(64,\), but .* has d_model 32 \(hook blocks\.1\.hook_resid_post\)",
    ):
        steering_hooks(tiny_model, torch.zeros(64))
    with pytest.raises(ValueError, match=r"ablation direction has shape \(16,\)"):
        ablation_hooks(tiny_model, torch.ones(16))
    with pytest.raises(ValueError, match="finite and non-zero"):
        ablation_hooks(tiny_model, torch.zeros(32))
    with pytest.raises(ValueError, match=r"token_mask covers 4 positions; activations have 6"):
        with steering(tiny_model, torch.zeros(32), token_mask=torch.ones(2, 4, dtype=torch.long)):
            tiny_model(torch.randint(0, 64, (2, 6)))
