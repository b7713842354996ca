"""The training losses: next-token cross-entropy on assistant tokens only, and token-level
divergences between two models' next-token distributions over masked positions."""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from mech.models.chat import ChatBatch


def kl_from_logprobs(
    reference: Float[Tensor, "n d_vocab"], logits: Float[Tensor, "n d_vocab"]
) -> Float[Tensor, " n"]:
    """KL(reference || softmax(logits)) per row, in nats; `reference` is already log-normalised."""
    current = logits.float().log_softmax(-1)
    reference = reference.float()
    return (reference.exp() * (reference - current)).sum(-1)


def topk_kl(
    ref_values: Float[Tensor, "n k"], ref_indices: Int[Tensor, "n k"], logits: Float[Tensor, "n d_vocab"]
) -> Float[Tensor, " n"]:
    """KL between both distributions coarsened to the reference's top-k tokens plus "the rest".

    By the data-processing inequality this is a lower bound on the full KL; it equals it when
    the top-k carry all of the reference mass. Stores k instead of d_vocab numbers per token.
    """
    current = logits.float().log_softmax(-1)
    ref = ref_values.float()
    cur = current.gather(-1, ref_indices)
    ref_rest = torch.log1p(-ref.exp().sum(-1).clamp(max=1 - 1e-7))
    cur_rest = torch.log1p(-cur.exp().sum(-1).clamp(max=1 - 1e-7))
    top = (ref.exp() * (ref - cur)).sum(-1)
    return top + ref_rest.exp() * (ref_rest - cur_rest)


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
    return kl_from_logprobs(reference_logits[mask].float().log_softmax(-1), logits[mask]).mean()


def response_targets(batch: ChatBatch) -> Int[Tensor, " n_targets"]:
    """The assistant tokens, in the order `logits[batch.prediction_mask]` predicts them."""
    return batch.tokens[:, 1:][batch.prediction_mask[:, :-1]]


def response_cross_entropy(logits: Float[Tensor, "batch pos d_vocab"], batch: ChatBatch) -> Float[Tensor, ""]:
    """Mean next-token cross-entropy over assistant tokens only (never prompt tokens or pads)."""
    return torch.nn.functional.cross_entropy(logits[batch.prediction_mask].float(), response_targets(batch))
