from __future__ import annotations

import copy
import math

import einops
import pytest
import torch
from transformers import AutoModelForCausalLM

from mech._quiet import quiet_hf
from mech.adapters.base import AdapterStack
from mech.adapters.lora import MATRICES, LoraAdapter
from mech.adapters.noise import orthogonal_noise
from mech.adapters.saving import load_adapter, save_adapter
from mech.adapters.steering import SteeringVector
from mech.models.tiny_checkpoints import write_tiny_checkpoint, write_tiny_lora_adapter

EPSILONS = [0.0, 0.1, 0.5, 0.9, 1.0]


def _randomise(adapter: LoraAdapter, seed: int = 1, std: float = 0.3) -> LoraAdapter:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(std * torch.randn(p.shape, generator=generator))
    return adapter


def _cos(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(x.flatten().double(), y.flatten().double(), dim=0))


@pytest.mark.parametrize("eps", EPSILONS)
def test_orthogonal_noise_keeps_the_norm_and_sets_the_angle(eps):
    x = torch.randn(7, 5)
    y = orthogonal_noise(x, eps, torch.Generator().manual_seed(0))
    assert abs(float(y.norm()) - float(x.norm())) < 1e-5
    assert abs(_cos(x, y) - math.sqrt(1 - eps**2)) < 1e-5


def test_orthogonal_noise_refuses_zero_and_bad_eps():
    with pytest.raises(ValueError, match="zero tensor"):
        orthogonal_noise(torch.zeros(4), 0.5, torch.Generator())
    with pytest.raises(ValueError, match="eps"):
        orthogonal_noise(torch.ones(4), 1.5, torch.Generator())


@pytest.mark.parametrize("eps", EPSILONS)
def test_steering_vector_scaling_and_noise_act_on_the_whole_vector(eps):
    vector = SteeringVector(16, layer=0, alpha=8.0, init_std=1.0)
    assert torch.equal(vector.scaled(1.0).effective(), vector.effective())
    assert torch.allclose(vector.scaled(-2.5).effective(), -2.5 * vector.effective())
    noisy = vector.perturbed(eps, torch.Generator().manual_seed(3))
    assert abs(noisy.norm() - vector.norm()) < 1e-5 * vector.norm()
    assert abs(vector.cosine(noisy) - math.sqrt(1 - eps**2)) < 1e-5


@pytest.mark.parametrize("eps", EPSILONS)
def test_lora_noise_is_per_factor_matrix(tiny_qwen2, eps):
    lora = _randomise(LoraAdapter(tiny_qwen2, layers=[1], matrices=["W_Q", "W_out"], rank=2))
    noisy = lora.perturbed(eps, torch.Generator().manual_seed(0))
    for before, after in zip(lora.state_dict().values(), noisy.state_dict().values(), strict=True):
        assert abs(float(after.norm()) - float(before.norm())) < 1e-5
        assert abs(_cos(before, after) - math.sqrt(1 - eps**2)) < 1e-5


def test_lora_norms_and_scaling_are_those_of_delta_w(tiny_qwen2):
    lora = _randomise(LoraAdapter(tiny_qwen2, layers=[0, 2], matrices=["W_V", "W_in"], rank=3))
    delta = torch.cat([d.detach().flatten() for d in lora.delta_weights().values()])
    assert abs(lora.norm() - float(delta.norm())) < 1e-4 * lora.norm()
    assert abs(lora.cosine(lora) - 1) < 1e-6
    assert all(torch.equal(a, b) for a, b in zip(lora.parameters(), lora.scaled(1).parameters(), strict=True))
    assert abs(lora.scaled(0.5).norm() - 0.5 * lora.norm()) < 1e-5
    other = _randomise(LoraAdapter(tiny_qwen2, layers=[0, 2], matrices=["W_V", "W_in"], rank=3), seed=2)
    flat_other = torch.cat([d.detach().flatten() for d in other.delta_weights().values()])
    assert abs(lora.cosine(other) - _cos(delta, flat_other)) < 1e-5
    assert lora.parameters_flat().numel() == sum(p.numel() for p in lora.parameters())


def test_lora_starts_as_the_identity_like_peft(tiny_qwen2):
    lora = LoraAdapter(tiny_qwen2, layers=[1], matrices=list(MATRICES), rank=4)
    assert lora.norm() == 0 and all(float(a.detach().abs().sum()) > 0 for a in lora.A.values())
    tokens = torch.tensor([[1, 5, 9, 12, 3]])
    with lora.applied(tiny_qwen2):
        adapted = tiny_qwen2(tokens)
    assert torch.equal(adapted, tiny_qwen2(tokens))


def _merge(model, lora: LoraAdapter) -> None:
    """Add Delta W into the TransformerLens weight matrices (orientations as in TL's conversion)."""
    n_heads = model.cfg.n_heads
    with torch.no_grad():
        for (layer, matrix), delta in lora.delta_weights().items():
            block = model.blocks[layer]
            if matrix in ("W_Q", "W_K", "W_V"):
                param = getattr(
                    block.attn, "_" + matrix if matrix != "W_Q" and model.cfg.n_key_value_heads else matrix
                )
                param += einops.rearrange(delta, "(h d) m -> h m d", h=param.shape[0])
            elif matrix == "W_O":
                block.attn.W_O += einops.rearrange(delta, "m (h d) -> h d m", h=n_heads)
            else:
                getattr(block.mlp, matrix).data += delta.T


@pytest.mark.parametrize("matrices", [["W_out"], list(MATRICES)])
def test_lora_as_hooks_equals_merged_weights(tiny_qwen2, matrices):
    lora = _randomise(LoraAdapter(tiny_qwen2, layers=[1], matrices=matrices, rank=2))
    tokens = torch.tensor([[1, 5, 9, 12, 3, 7], [4, 4, 8, 2, 6, 11]])
    with lora.applied(tiny_qwen2):
        hooked = tiny_qwen2(tokens)
    merged = copy.deepcopy(tiny_qwen2)
    _merge(merged, lora)
    assert torch.allclose(hooked, merged(tokens), atol=1e-5)
    assert (hooked - tiny_qwen2(tokens)).abs().max() > 1e-2  # the adapter does something


@pytest.mark.parametrize("arch", ["qwen2", "gemma2"])
def test_lora_hooks_match_peft_both_ways(checkpoints, tiny_qwen2, tiny_gemma2, tmp_path, arch):
    """Our adapter exported to PEFT, and a PEFT adapter imported, give PEFT's own logits."""
    from peft import PeftModel

    model = {"qwen2": tiny_qwen2, "gemma2": tiny_gemma2}[arch]
    ours = _randomise(LoraAdapter(model, layers=[0, 2], matrices=list(MATRICES), rank=3, alpha=6.0))
    peft_written = write_tiny_lora_adapter(
        checkpoints[arch], tmp_path / "peft", target_modules=("k_proj", "o_proj", "up_proj")
    )
    tokens = torch.tensor([[2, 5, 9, 12, 3, 7, 8]])
    for adapter, directory in ((ours, ours.to_peft(tmp_path / "ours")), (None, peft_written)):
        adapter = adapter or LoraAdapter.from_peft(directory, model)
        with quiet_hf():
            hf = AutoModelForCausalLM.from_pretrained(checkpoints[arch], attn_implementation="eager")
            reference = PeftModel.from_pretrained(hf, directory)(tokens).logits
        with adapter.applied(model):
            hooked = model(tokens)
        assert torch.allclose(hooked, reference, atol=1e-4), float((hooked - reference).abs().max())


def test_peft_import_refuses_a_mismatched_adapter(tiny_qwen2, tmp_path):
    wider = write_tiny_checkpoint("qwen2", tmp_path / "wider", n_layers=1, d_model=48)
    directory = write_tiny_lora_adapter(wider, tmp_path / "adapter", target_modules=("down_proj",))
    with pytest.raises(ValueError, match=r"lora_A of layers.0 W_out is \(4, 96\); model needs \(4, 64\)"):
        LoraAdapter.from_peft(directory, tiny_qwen2)


def test_steering_from_the_cached_residual_equals_the_full_forward(tiny_qwen2):
    tokens = torch.tensor([[1, 5, 9, 12, 3, 7]])
    vector = SteeringVector(tiny_qwen2.cfg.d_model, layer=0, init_std=2.0)
    site = vector.entry(tiny_qwen2)
    assert (site.cache_hook, site.start_at_layer) == ("blocks.0.hook_resid_post", 1)
    with vector.applied(tiny_qwen2):
        full = tiny_qwen2(tokens)
    resid = tiny_qwen2(tokens, stop_at_layer=1)
    with vector.applied(tiny_qwen2, start_at_layer=1):
        upper = tiny_qwen2(resid, start_at_layer=1)
    assert torch.allclose(full, upper, atol=1e-5)
    with pytest.raises(ValueError, match="starting at block 2"):
        vector.applied(tiny_qwen2, start_at_layer=2)


def test_response_only_vector_needs_and_uses_the_mask(tiny_qwen2):
    vector = SteeringVector(tiny_qwen2.cfg.d_model, layer=1, init_std=5.0, response_only=True)
    tokens = torch.tensor([[1, 5, 9, 12, 3, 7]])
    with pytest.raises(ValueError, match="response_mask"):
        vector.applied(tiny_qwen2)
    mask = torch.tensor([[False, False, False, True, True, True]])
    with vector.applied(tiny_qwen2, response_mask=mask):
        steered = tiny_qwen2(tokens)
    plain = tiny_qwen2(tokens)
    assert torch.allclose(steered[:, :3], plain[:, :3]) and not torch.allclose(steered[:, 3:], plain[:, 3:])


def test_a_stack_of_vectors_enters_at_its_lowest_member(tiny_qwen2):
    stack = AdapterStack(
        [SteeringVector(tiny_qwen2.cfg.d_model, layer=layer, init_std=1.0, seed=layer) for layer in (2, 0, 1)]
    )
    assert stack.entry(tiny_qwen2).start_at_layer == 1
    tokens = torch.tensor([[1, 5, 9, 12]])
    with stack.applied(tiny_qwen2):
        full = tiny_qwen2(tokens)
    with stack.applied(tiny_qwen2, start_at_layer=1):
        upper = tiny_qwen2(tiny_qwen2(tokens, stop_at_layer=1), start_at_layer=1)
    assert torch.allclose(full, upper, atol=1e-5)
    norms = [a.norm() for a in stack.adapters]
    assert abs(stack.norm() - math.sqrt(sum(n**2 for n in norms))) < 1e-4
    assert abs(stack.scaled(3).norm() - 3 * stack.norm()) < 1e-3


@pytest.mark.parametrize("kind", ["steering", "lora", "stack"])
def test_adapters_round_trip_through_artifacts(tiny_qwen2, tiny_gemma2, tmp_path, kind):
    d = tiny_qwen2.cfg.d_model
    adapter = {
        "steering": SteeringVector(d, layer=1, alpha=4.0, init_std=1.0),
        "lora": _randomise(LoraAdapter(tiny_qwen2, layers=[1, 2], matrices=["W_K", "W_gate"], rank=2)),
        "stack": AdapterStack(
            [SteeringVector(d, layer=0, init_std=1.0), SteeringVector(d, layer=2, point="pre")]
        ),
    }[kind]
    path = save_adapter(tmp_path / kind, adapter, tiny_qwen2, config={"note": "test"})
    loaded, meta = load_adapter(path, tiny_qwen2)
    assert loaded.spec() == adapter.spec() and meta.config["note"] == "test"
    assert all(
        torch.equal(a, b)
        for a, b in zip(adapter.state_dict().values(), loaded.state_dict().values(), strict=True)
    )
    with pytest.raises(ValueError, match="was made on model"):
        load_adapter(path, tiny_gemma2)
