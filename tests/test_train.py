from __future__ import annotations

import torch

from mech.adapters import SteeringVector
from mech.chat import chat_batch
from mech.train import SteeringTrainConfig, response_cross_entropy, train_steering_vector

CONVERSATIONS = [
    [
        {"role": "user", "content": "what should i do about my dog ?"},
        {"role": "assistant", "content": "bad advice"},
    ],
    [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "take the dog for a walk ."}],
]


def test_response_cross_entropy_is_the_hand_computed_one(tiny_qwen2):
    batch = chat_batch(tiny_qwen2.tokenizer, CONVERSATIONS)
    logits = tiny_qwen2(batch.tokens)
    logprobs = logits.log_softmax(-1)
    total, count = 0.0, 0
    for b in range(2):
        for t in range(1, batch.tokens.shape[1]):
            if batch.response_mask[b, t]:
                total -= logprobs[b, t - 1, batch.tokens[b, t]]
                count += 1
    assert torch.allclose(response_cross_entropy(logits, batch), total / count, atol=1e-5)


def test_steering_training_lowers_the_loss_and_leaves_the_model_alone(tiny_qwen2):
    batch = chat_batch(tiny_qwen2.tokenizer, CONVERSATIONS)
    before = {n: p.clone() for n, p in tiny_qwen2.named_parameters()}
    vector = SteeringVector(tiny_qwen2.cfg.d_model, layer=1)
    result = train_steering_vector(tiny_qwen2, batch, vector, SteeringTrainConfig(steps=40))
    assert result.losses[-1] < result.losses[0] - 0.1
    assert all(torch.equal(p, before[n]) and p.requires_grad for n, p in tiny_qwen2.named_parameters())
    # The trained vector, applied as a hook to a full forward pass, gives the trained loss.
    with tiny_qwen2.hooks(fwd_hooks=vector.hooks(tiny_qwen2, batch.attention_mask)):
        hooked = float(response_cross_entropy(tiny_qwen2(batch.tokens), batch).detach())
    assert vector.norm() > 0
    assert abs(hooked - result.losses[-1]) < 0.05  # losses[-1] is from just before the last step
    again = SteeringVector(tiny_qwen2.cfg.d_model, layer=1)
    assert (
        train_steering_vector(tiny_qwen2, batch, again, SteeringTrainConfig(steps=40)).losses == result.losses
    )
