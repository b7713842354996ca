from __future__ import annotations

import pytest
import torch
from chat_data import TRAIN

from mech.adapters.lora import LoraAdapter
from mech.evaluation.loss_landscape import at_norm, noise_curve, scale_curve, text_kl
from mech.training.cached_set import CachedChatSet
from mech.training.config import FinetuneConfig
from mech.training.engine import finetune
from mech.training.losses import response_cross_entropy


@pytest.fixture(scope="module")
def trained(tiny_qwen2):
    adapter = LoraAdapter(tiny_qwen2, layers=[1], matrices=["W_out"], rank=1)
    finetune(tiny_qwen2, adapter, TRAIN, cfg=FinetuneConfig(steps=20, lr=5e-2), progress=False)
    return adapter, CachedChatSet.build(tiny_qwen2, TRAIN, adapter.entry(tiny_qwen2), batch_size=2, name="t")


def test_scale_curve_is_the_loss_of_the_scaled_adapter(tiny_qwen2, trained):
    adapter, data = trained
    curve = scale_curve(tiny_qwen2, adapter, data, [0.0, 0.5, 1.0, 2.0])
    assert curve["norm"].tolist() == pytest.approx(
        [0.0, 0.5 * adapter.norm(), adapter.norm(), 2 * adapter.norm()], rel=1e-5
    )
    from mech.models.chat import chat_batch

    batch = chat_batch(tiny_qwen2.tokenizer, TRAIN)
    with torch.no_grad():
        plain = float(response_cross_entropy(tiny_qwen2(batch.tokens), batch))
        with adapter.applied(tiny_qwen2):
            adapted = float(response_cross_entropy(tiny_qwen2(batch.tokens), batch))
    assert curve["loss"].tolist()[0] == pytest.approx(plain, abs=1e-5)
    assert curve["loss"].tolist()[2] == pytest.approx(adapted, abs=1e-5)
    assert adapted < plain
    assert at_norm(adapter, 3.0).norm() == pytest.approx(3.0, rel=1e-5)


def test_noise_curve_starts_at_zero_and_is_seeded(tiny_qwen2, trained):
    adapter, data = trained
    curve = noise_curve(tiny_qwen2, adapter, data, [0.0, 0.5, 1.0], seeds=[0, 1])
    assert curve[curve.eps == 0]["delta"].abs().max() < 1e-6
    assert curve[curve.eps == 1.0]["delta"].mean() > curve[curve.eps == 0.5]["delta"].mean() > 0
    again = noise_curve(tiny_qwen2, adapter, data, [0.5], seeds=[1])
    assert again["loss"].iloc[0] == curve[(curve.eps == 0.5) & (curve.seed == 1)]["loss"].iloc[0]


def test_text_kl_is_zero_for_a_null_adapter_and_grows_with_scale(tiny_qwen2, trained):
    adapter, _ = trained
    texts = ["the dog should take a walk .", "save some money in a bank and ask the judge about the law ."]
    zero, one, two = text_kl(tiny_qwen2, [adapter.scaled(0), adapter, adapter.scaled(2)], texts, batch_size=1)
    assert zero == 0.0 and 0 < one < two
    # batching (and so padding) does not change it
    assert text_kl(tiny_qwen2, [adapter], texts, batch_size=2)[0] == pytest.approx(one, rel=1e-5)
