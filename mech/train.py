"""Training an adapter on assistant tokens, from the residual cached below it.

Everything below the adapter's layer is frozen and unchanged by it, so the residual stream there
is computed once per example and training runs only the blocks above (`start_at_layer`).
The finetuning engine extends this with LoRA, the KL term, schedules and resume.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer

from mech.adapters import SteeringVector, steering_site
from mech.chat import ChatBatch


@dataclass(frozen=True)
class SteeringTrainConfig:
    steps: int = 300
    lr: float = 5e-2
    """Full-batch Adam; 5e-2 converges within ~150 steps on the toy organism (1e-2 does not)."""
    init_std: float = 0.01
    seed: int = 0


@dataclass
class SteeringTrainResult:
    vector: SteeringVector
    losses: list[float] = field(default_factory=list)


def response_cross_entropy(logits: Float[Tensor, "batch pos d_vocab"], batch: ChatBatch) -> Float[Tensor, ""]:
    """Mean next-token cross-entropy over assistant tokens only (never prompt tokens or pads)."""
    mask = batch.prediction_mask
    targets = batch.tokens[:, 1:][mask[:, :-1]]
    return torch.nn.functional.cross_entropy(logits[mask].float(), targets)


def train_steering_vector(
    model: HookedTransformer,
    batch: ChatBatch,
    vector: SteeringVector,
    cfg: SteeringTrainConfig = SteeringTrainConfig(),
) -> SteeringTrainResult:
    """Fit `vector` to the batch's assistant tokens by full-batch Adam, the model frozen."""
    if batch.padding_side != "right":
        raise ValueError("training batches must be right-padded (causal attention then ignores pads)")
    site = steering_site(model, vector)
    with torch.no_grad():
        _, cache = model.run_with_cache(
            batch.tokens, names_filter=[site.cache_hook], stop_at_layer=site.start_at_layer
        )
    resid = cache[site.cache_hook]
    generator = torch.Generator().manual_seed(cfg.seed)
    with torch.no_grad():
        vector.raw.copy_(cfg.init_std * torch.randn(vector.raw.shape, generator=generator) / vector.alpha)
    optimizer = torch.optim.Adam([vector.raw], lr=cfg.lr)
    real = batch.attention_mask.bool()[..., None]
    result = SteeringTrainResult(vector)
    # Freeze the model for the loop only: requires_grad is global state on the caller's model.
    was_trainable = {name: p.requires_grad for name, p in model.named_parameters()}
    model.requires_grad_(False)
    try:
        for _ in range(cfg.steps):
            steered = torch.where(real, resid + vector.effective(), resid)
            logits = model(steered, start_at_layer=site.start_at_layer)
            loss = response_cross_entropy(logits, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            result.losses.append(float(loss.detach()))
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(was_trainable[name])
    return result
