"""Token-level divergences between two models' next-token distributions, over masked positions."""

from __future__ import annotations

from jaxtyping import Bool, Float, Int
from torch import Tensor


def masked_kl(
    reference_logits: Float[Tensor, "batch pos d_vocab"],
    logits: Float[Tensor, "batch pos d_vocab"],
    mask: Bool[Tensor, "batch pos"] | Int[Tensor, "batch pos"],
) -> Float[Tensor, ""]:
    """Mean over masked positions of KL(reference || model), in nats per token.

    Not divided by the vocabulary size (the authors' trainer was), and positions outside `mask`
    (pads, prompt tokens) never count.
    """
    mask = mask.bool()
    if not mask.any():
        raise ValueError("masked_kl: the mask selects no positions")
    ref = reference_logits[mask].float().log_softmax(-1)
    cur = logits[mask].float().log_softmax(-1)
    return (ref.exp() * (ref - cur)).sum(-1).mean()
