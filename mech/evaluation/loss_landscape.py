"""The paper's geometric probes of a trained adapter, on a cached data set.

- **Efficiency**: the training loss of an adapter scaled by s (its effective norm s times
  larger) — which solution reaches a lower loss at a given norm.
- **Stability**: the loss increase under orthogonal noise `x' = sqrt(1-eps^2) x + eps y` of the
  adapter's noise units (see each adapter class), averaged over seeds.

Both run on a `CachedChatSet` built at the adapter's entry, so each evaluation is a pass over
the blocks above the adapter only.

- **Pre-training significance**: the KL an adapter causes on plain (pre-training) text.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch
from transformer_lens import HookedTransformer

from mech.adapters.base import Adapter
from mech.models.chat import collate, pad_token_id
from mech.training.cached_set import CachedChatSet
from mech.training.losses import kl_from_logprobs


def scale_curve(
    model: HookedTransformer, adapter: Adapter, data: CachedChatSet, scales: Sequence[float]
) -> pd.DataFrame:
    """Loss of `adapter.scaled(s)` for each s: columns scale, norm, loss."""
    rows = []
    for s in scales:
        scaled = adapter.scaled(s)
        rows.append(
            {"scale": float(s), "norm": scaled.norm(), "loss": data.mean_cross_entropy(model, scaled)}
        )
    return pd.DataFrame(rows)


def at_norm(adapter: Adapter, norm: float) -> Adapter:
    """`adapter` rescaled to effective norm `norm` (the matched-norm comparison)."""
    current = adapter.norm()
    if current == 0:
        raise ValueError("cannot rescale an adapter whose update is zero")
    return adapter.scaled(norm / current)


def noise_curve(
    model: HookedTransformer,
    adapter: Adapter,
    data: CachedChatSet,
    eps_values: Sequence[float],
    *,
    seeds: Sequence[int] = tuple(range(10)),
) -> pd.DataFrame:
    """Loss under orthogonal noise: columns eps, seed, loss, delta (loss increase over eps = 0)."""
    base = data.mean_cross_entropy(model, adapter)
    rows = []
    for eps in eps_values:
        for seed in seeds:
            noisy = adapter.perturbed(eps, torch.Generator().manual_seed(seed))
            loss = data.mean_cross_entropy(model, noisy)
            rows.append({"eps": float(eps), "seed": seed, "loss": loss, "delta": loss - base})
    return pd.DataFrame(rows)


@torch.no_grad()
def text_kl(
    model: HookedTransformer,
    adapters: Sequence[Adapter],
    texts: Sequence[str],
    *,
    batch_size: int = 16,
    add_special_tokens: bool = True,
) -> list[float]:
    """Mean KL(unadapted || adapted) per token of plain text (no chat template), one per adapter.

    The pre-training-significance measure: how much an adapter's direction matters off the chat
    distribution. Every real token position counts; pads never do (the authors' averaged over
    padding). Texts longer than n_ctx are truncated.
    """
    if not texts:
        raise ValueError("no texts to measure the KL on")
    tokenizer = model.tokenizer
    ids = [tokenizer(t, add_special_tokens=add_special_tokens)["input_ids"][: model.cfg.n_ctx] for t in texts]
    totals, count = [0.0] * len(adapters), 0
    for start in range(0, len(ids), batch_size):
        batch = collate(
            ids[start : start + batch_size], pad_token_id=pad_token_id(tokenizer), padding_side="right"
        )
        tokens, mask = batch.tokens.to(model.cfg.device), batch.attention_mask.bool().to(model.cfg.device)
        reference = model(tokens)[mask].float().log_softmax(-1)
        for n, adapter in enumerate(adapters):
            with adapter.applied(model):
                totals[n] += float(kl_from_logprobs(reference, model(tokens)[mask]).sum())
        count += int(mask.sum())
    return [total / count for total in totals]
