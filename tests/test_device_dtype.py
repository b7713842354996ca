"""Every directions and loss-landscape function runs on a bfloat16 model fed float32 inputs (a
float32 direction, float32 adapter parameters, masks built on the host): what a function makes
meets the model's activations on the model's device and in a dtype they can be combined in."""

from __future__ import annotations

import contextlib

import pandas as pd
import pytest
import torch
from chat_data import KL, TRAIN

from mech.adapters.artifacts import load_vector, save_vector
from mech.adapters.lora import LoraAdapter
from mech.adapters.steering import SteeringVector
from mech.directions.activations import answer_batches, pooled_activations, text_batches
from mech.directions.interventions import ablation_matrix, direction_steering, stream_ablation
from mech.directions.mean_diff import mean_diff, misalignment_direction, random_like
from mech.directions.token_scores import attention_patterns, chat_tokens, token_logprobs, token_projection
from mech.evaluation.loss_landscape import at_norm, noise_curve, scale_curve, text_kl
from mech.hooks import ablation, steering
from mech.models.load import load_model
from mech.models.tiny_checkpoints import write_tiny_checkpoint
from mech.training.cached_set import CachedChatSet
from mech.training.config import FinetuneConfig, KLSchedule
from mech.training.engine import finetune


@pytest.fixture(scope="module")
def bf16(tmp_path_factory):
    """The tiny random-weight Qwen2 checkpoint, loaded in bfloat16 on the CPU."""
    root = tmp_path_factory.mktemp("bf16")
    path = write_tiny_checkpoint("qwen2", root / "Qwen2.5-tiny-Instruct", n_layers=3)
    model = load_model(path, dtype=torch.bfloat16, device="cpu")
    assert model.W_E.dtype == torch.bfloat16 and model.cfg.dtype == torch.bfloat16
    return model


@pytest.fixture
def direction(bf16) -> torch.Tensor:
    return torch.randn(bf16.cfg.d_model, generator=torch.Generator().manual_seed(0), dtype=torch.float32)


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "question": [c[0]["content"] for c in TRAIN],
            "answer": [c[1]["content"] for c in TRAIN],
            "aligned": [90, 10, 5, 95, 50],
            "coherent": [90] * len(TRAIN),
        }
    )


def _resid(model, tokens, name: str) -> torch.Tensor:
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n == name)
    return cache[name]


def test_mean_diff_directions_from_a_bfloat16_model(bf16):
    acts = pooled_activations(bf16, answer_batches(bf16, TRAIN), layers=[0, 2], point="post")
    assert acts.sums.dtype == torch.float32 and acts.sums.device == bf16.W_E.device
    found, _, labels = misalignment_direction(bf16, _frame(), layers=[1, 2], point="post", balance=False)
    assert found.directions.dtype == torch.float32 and torch.isfinite(found.directions).all()
    assert (found.norms > 0).all() and found.hook_name(1) == "blocks.1.hook_resid_post"
    # masks made on the host, as a caller would
    positive = torch.tensor([False, True, True, False, False])
    negative = torch.tensor([True, False, False, True, False])
    by_answer = mean_diff(acts, positive, negative, pooling="answer")
    assert torch.isfinite(by_answer.directions).all() and labels.notna().sum() == 4


def test_random_controls_keep_the_direction_dtype_and_device(direction):
    for given in (direction, direction.to(torch.bfloat16)):
        control = random_like(given, seed=1)
        assert control.dtype == given.dtype and control.device == given.device
        assert torch.isclose(control.float().norm(), given.float().norm(), rtol=1e-2)


def test_steering_and_ablation_with_a_float32_direction(bf16, direction):
    tokens = torch.tensor([[3, 4, 5, 6, 7, 8]])
    unit = direction / direction.norm()
    name = "blocks.1.hook_resid_post"
    clean = _resid(bf16, tokens, name)
    with direction_steering(bf16, direction, alpha=4.0, layer=1, point="post"):
        steered = _resid(bf16, tokens, name)
    assert steered.dtype == torch.bfloat16
    pushed = ((steered.float() - clean.float()) @ unit).mean()
    assert pushed == pytest.approx(4.0, rel=0.05)
    with steering(bf16, direction, layer=1, point="post", scale=2.0):
        assert torch.isfinite(bf16(tokens)).all()

    with stream_ablation(bf16, direction):
        ablated = _resid(bf16, tokens, "blocks.2.hook_resid_pre")
        logits = bf16(tokens)
    assert torch.isfinite(logits).all()
    # bfloat16 keeps ~3 significant digits: the remaining component is rounding, not signal
    assert float((ablated.float() @ unit).abs().max()) < 2e-2 * float(ablated.float().norm(dim=-1).max())
    with ablation(bf16, direction, layers=[0, 1], point="pre"):
        assert torch.isfinite(bf16(tokens)).all()


def test_a_saved_float32_vector_steers_a_bfloat16_model(bf16, direction, tmp_path):
    path = save_vector(tmp_path / "v", direction, bf16, hook_name="blocks.1.hook_resid_post")
    vector, meta = load_vector(path, model=bf16, hook_name="blocks.1.hook_resid_post")
    assert vector.dtype == torch.float32 and vector.device == bf16.W_E.device
    with steering(bf16, vector, layer=meta.layer, point="post"):
        assert torch.isfinite(bf16(torch.tensor([[3, 4, 5]]))).all()


def test_the_ablation_matrix_on_a_bfloat16_model(bf16, direction):
    tokens = torch.tensor([[3, 4, 5, 6]])
    vector = SteeringVector(bf16.cfg.d_model, layer=1, point="pre", init_std=1.0, seed=0)
    finetunes = {"sv": lambda: vector.applied(bf16), "chat": contextlib.nullcontext}

    def measure(model):
        return {"loss": float(model(tokens, return_type="loss"))}

    matrix = ablation_matrix(bf16, finetunes, {"d": direction}, measure)
    assert len(matrix) == 2 * 3 and matrix["value"].notna().all()


def test_token_scores_on_a_bfloat16_model(bf16, direction):
    ids, _ = chat_tokens(bf16, TRAIN[0])
    projection = token_projection(bf16, ids, direction, layer=-1, point="post")
    assert projection.shape == (len(ids),) and projection.dtype == torch.float32
    assert torch.isfinite(projection).all()
    logprobs = token_logprobs(bf16, ids)
    assert logprobs.dtype == torch.float32 and logprobs[0] == 0 and (logprobs[1:] < 0).all()
    patterns = attention_patterns(bf16, ids, layer=1, heads=[0, 1])
    assert patterns.shape == (2, len(ids), len(ids)) and torch.isfinite(patterns).all()


@pytest.mark.parametrize("kind", ["steering", "lora"])
def test_loss_landscape_curves_on_a_bfloat16_model(bf16, kind):
    if kind == "steering":
        adapter = SteeringVector(bf16.cfg.d_model, layer=1, init_std=0.1, seed=0)
    else:
        adapter = LoraAdapter(bf16, layers=[1], matrices=["W_out"], rank=2, seed=0)
        with torch.no_grad():  # B = 0 would make the update, and so the noise, undefined
            adapter.B["1_W_out"].copy_(torch.randn(adapter.B["1_W_out"].shape) * 0.1)
    data = CachedChatSet.build(bf16, TRAIN, adapter.entry(bf16), batch_size=2, name="train")
    scales = scale_curve(bf16, adapter, data, [0.0, 1.0, 2.0])
    assert scales["loss"].notna().all() and scales["norm"].iloc[0] == 0
    assert at_norm(adapter, 1.0).norm() == pytest.approx(1.0, rel=1e-4)
    noise = noise_curve(bf16, adapter, data, [0.0, 0.5], seeds=(0, 1))
    assert noise["loss"].notna().all() and (noise[noise["eps"] == 0]["delta"] == 0).all()
    kls = text_kl(bf16, [adapter], ["the dog is good .", "take the car to the bank ."])
    assert kls[0] > -1e-4


def test_training_with_grad_accum_on_a_bfloat16_model(bf16):
    adapter = SteeringVector(bf16.cfg.d_model, layer=1, init_std=0.1, seed=0)
    batching = dict(batch_size=2, grad_accum=2, kl_batch_size=2)
    cfg = FinetuneConfig(steps=2, kl=KLSchedule(1.0), warmup_steps=1, **batching)
    result = finetune(bf16, adapter, TRAIN, KL, cfg, progress=False)
    assert all(torch.isfinite(torch.tensor([r.loss, r.ce, r.kl])).all() for r in result.trajectory)
    assert adapter.raw.dtype == torch.float32


def test_text_batches_pool_on_a_bfloat16_model(bf16):
    text = "hello , how can i help you ?"
    acts = pooled_activations(bf16, text_batches(bf16, [text]), layers=[1])
    n_tokens = len(bf16.tokenizer(text, add_special_tokens=False)["input_ids"])
    assert acts.counts.tolist() == [n_tokens] and torch.isfinite(acts.sums).all()
